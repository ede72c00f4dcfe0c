//! `peercache-bench mooncake`, and `compare`'s Mooncake reference, against a
//! stand-in for Mooncake's transfer_engine_bench: a shell script that answers
//! `--help` as gflags does, runs as a target until it is stopped, and as an
//! initiator prints the summary line in Mooncake's format. The real binary
//! does not load on the machines these tests run on (its PyPI wheel needs
//! libcuda.so.1). Only 127.0.0.1; no timing is asserted.

mod common;

use common::{free_port, tempdir, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peercache-bench"))
}

/// The stand-in. As a target it logs the address Mooncake's P2P handshake
/// logs (a port of its own, here the requested one + 1) and writes it to
/// `target-address` beside itself; an initiator given another --segment_id
/// fails as Mooncake's does. The rate depends on the block size so that
/// several of Mooncake's units are parsed. FAKE_TEB_NO_SUMMARY=1: the
/// initiator ends without a summary line.
const FAKE_TEB: &str = r#"#!/bin/sh
here=$(dirname "$0")
echo "args: $*" >&2
mode=initiator; segment=; local=; block=
for a in "$@"; do
  case "$a" in
    --help)
      printf '%s\n' "transfer_engine_bench: Warning: SetUsageMessage() never called" "" \
        "  Flags from transfer_engine_bench.cpp:" \
        "    -use_vram (Allocate memory from GPU VRAM) type: bool default: true" \
        "    -report_precision (Report precision) type: uint32 default: 2"
      exit 1 ;;
    --mode=*) mode=${a#--mode=} ;;
    --segment_id=*) segment=${a#--segment_id=} ;;
    --local_server_name=*) local=${a#--local_server_name=} ;;
    --block_size=*) block=${a#--block_size=} ;;
  esac
done
if [ "$mode" = target ]; then
  address="${local%:*}:$(( ${local##*:} + 1 ))"
  echo "$address" > "$here/target-address"
  echo $$ > "$here/target-pid"
  echo "I0101 00:00:00.000000 1 transfer_engine.cpp:146] Transfer Engine RPC using P2P handshake, listening on $address" >&2
  exec sleep 600
fi
if [ -f "$here/target-address" ] && [ "$segment" != "$(cat "$here/target-address")" ]; then
  echo "E0101 00:00:00.000000 1 transfer_engine_bench.cpp:260] Unable to get target segment ID, please recheck" >&2
  exit 1
fi
if [ -n "$FAKE_TEB_NO_SUMMARY" ]; then
  echo "I0101 00:00:01.000000 1 transfer_engine_bench.cpp:300] Worker 0 stopped!" >&2
  exit 0
fi
case "$block" in
  4096) rate="1.50 GB/s" ;;
  65536) rate="12.00 Gb/s" ;;
  1048576) rate="2048.00 MiB/s" ;;
  *) rate="0.75 GB/s" ;;
esac
echo "I0101 00:00:01.000000 1 transfer_engine_bench.cpp:420] Test completed: duration 1.00, batch count 100, throughput $rate" >&2
"#;

/// What the PyPI wheel's binary does on a host without the NVIDIA driver.
const UNLOADABLE_TEB: &str = r#"#!/bin/sh
echo "transfer_engine_bench: error while loading shared libraries: libcuda.so.1: cannot open shared object file: No such file or directory" >&2
exit 127
"#;

/// An installed stand-in: its path, and the directory holding it (removed
/// with it).
struct Installed {
    _dir: TempDir,
    path: PathBuf,
}

impl std::ops::Deref for Installed {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for Installed {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

/// Writes `script` as an executable `transfer_engine_bench` in a new
/// directory.
fn install(script: &str) -> Installed {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let path = dir.join("transfer_engine_bench");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Installed { _dir: dir, path }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run peercache-bench")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one file of `dir` ending in `ext`.
fn only_file(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{ext} files in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn reads_each_block_size_from_a_target_it_starts_and_writes_the_results() {
    let teb = install(FAKE_TEB);
    let out_dir = tempdir();
    let out = run(bench()
        .args(["mooncake", "--teb"])
        .arg(&teb)
        .args([
            "--block-sizes",
            "4k,64k,1m",
            "--duration",
            "1",
            "--tag",
            "fake",
        ])
        .arg("--out-dir")
        .arg(&out_dir));
    assert!(out.status.success(), "{}", stderr(&out));

    let v = json_of(&only_file(&out_dir, ".json"));
    assert_eq!(v["mode"], "mooncake");
    assert_eq!(v["tag"], "fake");
    assert!(v["host"]["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(v["meta"]["protocol"], "tcp");
    assert_eq!(v["meta"]["operation"], "read");
    assert_eq!(v["meta"]["binary"], teb.to_string_lossy().as_ref());
    assert!(v["meta"]["target"].as_str().unwrap().starts_with("local"));
    // The initiator read from the address the target logged, not the port
    // it was started with.
    let logged = std::fs::read_to_string(teb.with_file_name("target-address")).unwrap();
    assert_eq!(v["meta"]["segment_id"], logged.trim());
    let runs = v["runs"].as_array().unwrap();
    let got: Vec<(u64, f64)> = runs
        .iter()
        .map(|r| {
            assert_eq!(r["batch"], 32);
            assert_eq!(r["threads"], 1);
            (
                r["block_size"].as_u64().unwrap(),
                r["gbps"].as_f64().unwrap(),
            )
        })
        .collect();
    let expected = [(4096, 1.5), (65536, 1.5), (1 << 20, 2.147483648)];
    for ((block, gbps), (want_block, want_gbps)) in got.iter().zip(expected) {
        assert_eq!(*block, want_block);
        assert!((gbps - want_gbps).abs() < 1e-9, "{block}: {gbps}");
    }
    assert_eq!(runs[1]["reported"], "12.00 Gb/s");

    let md = std::fs::read_to_string(only_file(&out_dir, ".md")).unwrap();
    assert!(md.contains("| 4096 | 32 | 1 | 1.500 | 1.50 GB/s |"), "{md}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| 1048576 | 32 | 1 | 2.147 |"));

    // Mooncake's flags, host memory, loopback.
    let log = std::fs::read_to_string(runs[0]["log"].as_str().unwrap()).unwrap();
    for flag in [
        "--mode=initiator",
        "--protocol=tcp",
        "--metadata_server=P2PHANDSHAKE",
        "--operation=read",
        "--block_size=4096",
        "--batch_size=32",
        "--threads=1",
        "--duration=1",
        "--use_vram=false",
        "--local_server_name=127.0.0.1",
    ] {
        assert!(log.contains(flag), "{flag} missing: {log}");
    }
    // The target it started has been stopped.
    let target_log = only_file(&out_dir, "-target.log");
    assert!(std::fs::read_to_string(target_log)
        .unwrap()
        .contains("--mode=target"));
    let pid: libc::pid_t = std::fs::read_to_string(teb.with_file_name("target-pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only checks whether the pid exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "the target still runs");
}

#[test]
fn a_running_target_is_read_at_segment_id() {
    let teb = install(FAKE_TEB);
    let out_dir = tempdir();
    let segment = format!("127.0.0.1:{}", free_port());
    let out = run(bench()
        .args(["mooncake", "--teb"])
        .arg(&teb)
        .args(["--segment-id", &segment, "--block-sizes", "16k"])
        .args(["--threads", "2", "--batch-size", "8", "--duration", "1"])
        .arg("--out-dir")
        .arg(&out_dir));
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json_of(&only_file(&out_dir, ".json"));
    assert_eq!(v["meta"]["segment_id"], segment.as_str());
    assert!(v["meta"]["target"].as_str().unwrap().starts_with("remote"));
    let row = &v["runs"][0];
    assert_eq!(
        (row["block_size"].as_u64(), row["gbps"].as_f64()),
        (Some(16384), Some(0.75))
    );
    assert_eq!(
        (row["batch"].as_u64(), row["threads"].as_u64()),
        (Some(8), Some(2))
    );
    let log = std::fs::read_to_string(row["log"].as_str().unwrap()).unwrap();
    assert!(log.contains(&format!("--segment_id={segment}")), "{log}");
    assert!(!log.contains("--local_server_name"), "{log}");
    assert!(
        !teb.with_file_name("target-address").exists(),
        "a target was started"
    );
}

#[test]
fn a_missing_transfer_engine_bench_exits_3_and_says_how_to_get_it() {
    let out = run(bench().args(["mooncake", "--teb", "/nonexistent/transfer_engine_bench"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Mooncake not available"), "{err}");
    assert!(
        err.contains("/nonexistent/transfer_engine_bench: no such file"),
        "{err}"
    );
    assert!(
        err.contains("pip install mooncake-transfer-engine"),
        "{err}"
    );

    let empty = tempdir();
    let out = run(bench().args(["mooncake", "--check"]).env("PATH", &empty));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("transfer_engine_bench is not on PATH"));

    let teb = install(FAKE_TEB);
    let path = format!("{}:/usr/bin:/bin", teb.parent().unwrap().display());
    let out = run(bench().args(["mooncake", "--check"]).env("PATH", path));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("loads"));
}

#[test]
fn a_transfer_engine_bench_that_cannot_load_exits_3_with_the_loader_message() {
    let teb = install(UNLOADABLE_TEB);
    let out = run(bench()
        .args(["mooncake", "--block-sizes", "4k", "--teb"])
        .arg(&teb));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot load here"), "{err}");
    assert!(err.contains("libcuda.so.1"), "{err}");
    assert!(err.contains("NVIDIA driver"), "{err}");
}

#[test]
fn an_initiator_without_a_summary_line_fails_and_quotes_its_log() {
    let teb = install(FAKE_TEB);
    let out_dir = tempdir();
    let segment = format!("127.0.0.1:{}", free_port());
    let out = run(bench()
        .args(["mooncake", "--teb"])
        .arg(&teb)
        .args([
            "--segment-id",
            &segment,
            "--block-sizes",
            "4k",
            "--duration",
            "1",
        ])
        .arg("--out-dir")
        .arg(&out_dir)
        .env("FAKE_TEB_NO_SUMMARY", "1"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("printed no `Test completed:"), "{err}");
    assert!(err.contains("Worker 0 stopped!"), "{err}");
    assert!(!out_dir.read_dir().unwrap().any(|e| e
        .unwrap()
        .path()
        .extension()
        .is_some_and(|x| x == "json")));
}

/// A small `compare` at one block size with `--teb`; returns its JSON and
/// Markdown, and its output directory (which holds the logs).
fn compare(teb: &Path) -> (serde_json::Value, String, TempDir) {
    let out_dir = tempdir();
    let out = run(bench()
        .args(["compare", "--block-sizes", "16k", "--concurrencies", "1,2"])
        .args([
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--working-set",
            "64",
        ])
        .args(["--batch-size", "8", "--tag", "cmp", "--teb"])
        .arg(teb)
        .arg("--out-dir")
        .arg(&out_dir));
    assert!(out.status.success(), "{}", stderr(&out));
    let json = only_file(&out_dir, ".json");
    let md = std::fs::read_to_string(json.with_extension("md")).unwrap();
    (json_of(&json), md, out_dir)
}

#[test]
fn compare_puts_mooncake_beside_the_get_peak_at_the_same_block_size() {
    let (v, md, _out) = compare(&install(FAKE_TEB));
    assert_eq!(v["meta"]["page_size"], 16384);
    let refs = &v["references"];
    assert_eq!(refs["mooncake_gbps"], 0.75);
    assert!(refs["raw_tcp_gbps"].as_f64().unwrap() > 0.0, "{refs}");
    let peak = &v["peak"][0];
    let ratio = v["ratios"]["get_peak_vs_mooncake"].as_f64().unwrap();
    assert!((ratio - peak["gbps"].as_f64().unwrap() / 0.75).abs() < 1e-9);
    assert!(md.contains("% of Mooncake"), "{md}");
    // Same block size and batch as PeerCache, as many threads as its PEAK.
    let status = refs["mooncake"].as_str().unwrap();
    let log = status.rsplit("log ").next().unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    for flag in [
        "--block_size=16384".to_string(),
        "--batch_size=8".to_string(),
        format!("--threads={}", peak["concurrency"]),
        "--duration=1".to_string(),
    ] {
        assert!(log.contains(&flag), "{flag} missing: {log}");
    }
}

#[test]
fn compare_without_a_loadable_mooncake_records_why_and_completes() {
    let (v, _, _out) = compare(&install(UNLOADABLE_TEB));
    let refs = &v["references"];
    let why = refs["mooncake"].as_str().unwrap();
    assert!(
        why.starts_with("not run:") && why.contains("libcuda.so.1"),
        "{why}"
    );
    assert!(refs.get("mooncake_gbps").is_none());
    assert!(v["ratios"].get("get_peak_vs_mooncake").is_none());
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
}
