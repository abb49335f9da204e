//! The setup macros of the system tests (the idea of ripgrep's `rgtest!`): each starts a test
//! by the one skip rule (common/skip.rs) and hands it its fixture, named after the test, so
//! that no test spells its own name or repeats the skip-then-start lines.
//!
//! - a mount test: `let Some(fx) = fixture!(Settings::default()) else { return };`
//! - an SFTP test: `let Some(mut env) = sftp_env!() else { return };`, or
//!   `sftp_env!("[outbox]\nincomplete_timeout_secs = 1\n")` with settings for the config.

/// The enclosing test's name, `module::test`.
macro_rules! test_name {
    () => {{
        fn __f() {}
        let name = std::any::type_name_of_val(&__f).trim_end_matches("::__f");
        name.strip_prefix("system::").unwrap_or(name)
    }};
}

/// A [`crate::common::Fixture`] (a state folder and a running mount) with these settings,
/// or None after printing that the test skipped.
macro_rules! fixture {
    ($settings:expr) => {{
        let name = test_name!();
        if $crate::common::system_tests_enabled(name) {
            Some($crate::common::Fixture::new(name, $settings))
        } else {
            None
        }
    }};
}

/// A [`crate::common::sshd::Env`] (a mount and a stock sshd serving it), with extra TOML
/// appended to its settings, or None after printing that the test skipped.
macro_rules! sftp_env {
    () => {
        sftp_env!("")
    };
    ($extra_toml:expr) => {{
        if $crate::common::sshd::ready(test_name!()) {
            Some($crate::common::sshd::Env::start_with($extra_toml))
        } else {
            None
        }
    }};
}
