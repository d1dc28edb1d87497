//! jit-core's provider conformance suite against the fake, in both modes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jit_azure::testing::conformance_harness;
use jit_azure::Mode;
use jit_core::testing::provider::run_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pim_mode_passes_the_conformance_suite() {
    let (harness, fake) = conformance_harness(Mode::Pim);
    run_all(&harness).await;
    // Nothing the suite sent broke the Swagger schemas.
    assert_eq!(fake.state.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_mode_passes_the_conformance_suite() {
    let (harness, fake) = conformance_harness(Mode::Assignments);
    run_all(&harness).await;
    assert_eq!(fake.state.violations(), Vec::<String>::new());
}
