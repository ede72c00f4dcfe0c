//! "Did you mean ...?": the closest known name to a misspelt one.

/// Lower-cases `name` and turns `-`, `.` and spaces into `_`, so that
/// `Discovery-Addr` compares equal to `discovery_addr`.
fn normalize(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            '-' | '.' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The candidate closest to `input`, or `None` when nothing is close enough
/// to be a plausible typo.
///
/// A candidate matches when it is equal up to case and `-`/`_`, when its
/// Damerau-Levenshtein distance is at most a third of the shorter length
/// (at least 1), or when one of at least 5 characters contains the other
/// (`"segment_size"` -> `"global_segment_size"`). Ties go to the smaller
/// distance, then the higher Jaro-Winkler similarity, then the earlier
/// candidate.
pub fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let wanted = normalize(input);
    if wanted.is_empty() {
        return None;
    }
    let mut best: Option<(usize, f64, &'a str)> = None;
    for candidate in candidates {
        let cand = normalize(candidate);
        if cand == wanted {
            return Some(candidate);
        }
        let distance = strsim::damerau_levenshtein(&wanted, &cand);
        let shorter = wanted.chars().count().min(cand.chars().count());
        let close = distance <= (shorter / 3).max(1);
        let contained = shorter >= 5 && (cand.contains(&wanted) || wanted.contains(&cand));
        if !close && !contained {
            continue;
        }
        // Containment ranks after any real typo match.
        let rank = if close { distance } else { usize::MAX };
        let similarity = strsim::jaro_winkler(&wanted, &cand);
        let better = match best {
            None => true,
            Some((best_rank, best_similarity, _)) => {
                rank < best_rank || (rank == best_rank && similarity > best_similarity)
            }
        };
        if better {
            best = Some((rank, similarity, candidate));
        }
    }
    best.map(|(_, _, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::closest;

    const KEYS: &[&str] = &[
        "discovery_addr",
        "disk_size",
        "disk_path",
        "mode",
        "node_id",
    ];

    #[test]
    fn finds_typos_and_spelling_variants() {
        let keys = KEYS.iter().copied();
        assert_eq!(
            closest("dicovery_addr", keys.clone()),
            Some("discovery_addr")
        );
        assert_eq!(
            closest("discovery_adrr", keys.clone()),
            Some("discovery_addr")
        );
        assert_eq!(
            closest("Discovery-Addr", keys.clone()),
            Some("discovery_addr")
        );
        assert_eq!(closest("disk_sise", keys.clone()), Some("disk_size"));
        assert_eq!(closest("discovery", keys.clone()), Some("discovery_addr"));
        assert_eq!(closest("modee", keys), Some("mode"));
    }

    #[test]
    fn says_nothing_when_nothing_is_close() {
        let keys = KEYS.iter().copied();
        assert_eq!(closest("totally_unrelated", keys.clone()), None);
        assert_eq!(closest("xyz", keys.clone()), None);
        assert_eq!(closest("", keys), None);
        assert_eq!(closest("rdma", ["tcp"]), None);
    }

    #[test]
    fn prefers_the_nearest_candidate() {
        assert_eq!(closest("rdmaa", ["rdma", "tcp"]), Some("rdma"));
        assert_eq!(closest("tcpp", ["rdma", "tcp"]), Some("tcp"));
        assert_eq!(closest("gbb", ["b", "kb", "mb", "gb", "tb"]), Some("gb"));
    }
}
