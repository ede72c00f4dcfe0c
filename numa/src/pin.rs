//! Pinning the calling thread to one CPU.

use std::io;

use core_affinity::CoreId;
use tracing::{debug, warn};

/// CPUs a `cpu_set_t` can name. core_affinity indexes its fixed-size set without
/// a bound check, so larger ids are refused here instead of panicking there.
const CPU_SET_CPUS_MAX: usize = libc::CPU_SETSIZE as usize;

/// Pins the calling thread to `cpu` (a Linux CPU number), so that it runs there
/// and nowhere else; returns whether it is now pinned.
///
/// Call it first thing in a shard's thread: memory the thread touches afterwards
/// is allocated on the CPU's NUMA node by the kernel's first-touch policy.
///
/// On failure (CPU offline, outside the process's cgroup, id of 1024 or more) it
/// logs a warning and returns `false`, leaving the thread's affinity unchanged:
/// the shard still runs, only unpinned. It never panics.
pub fn pin_current_thread(cpu: usize) -> bool {
    if cpu >= CPU_SET_CPUS_MAX {
        warn!(
            cpu,
            cpu_max = CPU_SET_CPUS_MAX - 1,
            "cannot pin a thread to a CPU beyond the affinity mask size: thread left unpinned"
        );
        return false;
    }
    if core_affinity::set_for_current(CoreId { id: cpu }) {
        debug!(cpu, "thread pinned");
        true
    } else {
        // core_affinity returns right after sched_setaffinity fails, so errno is
        // still the call's.
        let error = io::Error::last_os_error();
        warn!(
            cpu,
            %error,
            "cannot pin thread to CPU (offline, or outside this process's cgroup \
             cpuset): thread left unpinned"
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity_cpus() -> Vec<usize> {
        core_affinity::get_core_ids()
            .expect("sched_getaffinity works on Linux")
            .into_iter()
            .map(|core| core.id)
            .collect()
    }

    #[test]
    fn pins_to_every_allowed_cpu() {
        // A thread of its own, so the test harness's threads keep their mask.
        std::thread::spawn(|| {
            let cpus_allowed = affinity_cpus();
            assert!(!cpus_allowed.is_empty());
            for cpu in cpus_allowed {
                assert!(pin_current_thread(cpu), "pin to allowed CPU {cpu}");
                assert_eq!(affinity_cpus(), [cpu], "mask after pinning to {cpu}");
            }
        })
        .join()
        .expect("pinning thread");
    }

    #[test]
    fn refuses_cpus_it_cannot_pin_to() {
        std::thread::spawn(|| {
            let mask_before = affinity_cpus();
            assert!(!pin_current_thread(CPU_SET_CPUS_MAX));
            assert!(!pin_current_thread(usize::MAX));
            // The highest id a cpu_set_t can name, unless this machine has it.
            let cpu_absent = CPU_SET_CPUS_MAX - 1;
            if !mask_before.contains(&cpu_absent) {
                assert!(!pin_current_thread(cpu_absent));
            }
            assert_eq!(affinity_cpus(), mask_before, "a failed pin changes nothing");
        })
        .join()
        .expect("pinning thread");
    }
}
