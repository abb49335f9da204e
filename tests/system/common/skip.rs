//! The one rule for the system tests: they run when `AS2BOX_SYSTEM_TESTS` is set to
//! something other than empty or `0` (CI and `scripts/test-all` set it to 1), and then a
//! missing prerequisite fails the test; otherwise each test prints that it skipped and
//! passes. Shared by both test binaries (`tests/as2` includes this file by path).
#![allow(dead_code)]

/// Whether `AS2BOX_SYSTEM_TESTS` asks for the system tests: set, not empty and not `0`.
pub fn system_tests_required() -> bool {
    std::env::var_os("AS2BOX_SYSTEM_TESTS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Start of a system test: true when it runs. False, after printing that `test` skipped,
/// when `AS2BOX_SYSTEM_TESTS` does not ask for the system tests.
pub fn system_tests_on(test: &str) -> bool {
    if system_tests_required() {
        return true;
    }
    println!("skipping {test}: AS2BOX_SYSTEM_TESTS is not set (set it to 1, as root, to run it)");
    false
}

/// For a prerequisite that is missing (`what`): with the system tests asked for, fails the
/// test saying so; otherwise prints that the test skipped and returns `None`.
pub fn skip_or_fail<T>(what: &str) -> Option<T> {
    // libtest names each test's thread after the test (not with --test-threads=1).
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    if system_tests_required() {
        panic!("AS2BOX_SYSTEM_TESTS is set but {test} cannot run: {what}");
    }
    println!("skipping {test}: {what} (set AS2BOX_SYSTEM_TESTS=1 to make this a failure)");
    None
}
