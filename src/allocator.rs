//! The allocator's settings for the process, made before any thread starts.

/// Arenas glibc's allocator may keep. By default a thread that finds the allocator busy
/// gets an arena of its own, up to eight per core: the runtime's workers, SQLite's
/// connection threads and the blocking pool each fragment one, and a daemon that holds
/// hundreds of thousands of payments and answers pays for every one in resident memory.
const ARENAS: i32 = 2;

/// Caps glibc's arenas at [`ARENAS`], unless `MALLOC_ARENA_MAX` in the environment says
/// otherwise (the operator's word wins). `false` only when glibc refuses the setting;
/// elsewhere there is nothing to set.
pub fn limit_arenas() -> bool {
    std::env::var_os("MALLOC_ARENA_MAX").is_some() || cap_arenas()
}

/// Sets the cap; whether the allocator took it.
fn cap_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets a tunable of the allocator and touches no memory of ours;
        // it runs before the runtime starts any other thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    true
}

#[cfg(test)]
mod tests {
    /// glibc takes the setting (mallopt answers 1 on success, 0 for a parameter it does
    /// not know), whatever the environment of the test run says.
    #[test]
    fn the_arena_cap_is_taken() {
        assert!(super::cap_arenas());
    }
}
