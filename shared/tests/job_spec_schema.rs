//! Keeps `docs/job-spec.schema.json` equal to the schema derived from the Rust types, so the
//! document a Redis client follows cannot drift from what the fleet reads.

use std::path::PathBuf;

use runfleet_shared::job::JobSpec;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/job-spec.schema.json")
}

/// Fails when the committed schema differs from the derived one; `RUNFLEET_BLESS=1` rewrites
/// the file instead (then review and commit the change).
#[test]
fn the_committed_job_spec_schema_is_the_derived_one() {
    let derived = JobSpec::json_schema();
    let path = committed_path();
    if std::env::var("RUNFLEET_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &derived)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == derived,
        "{} is not the schema derived from JobSpec (shared/src/job.rs). If the Rust types \
         changed on purpose, refresh it with\n\n    RUNFLEET_BLESS=1 cargo test -p runfleet-shared \
         --test job_spec_schema\n\nand commit the file. The derived schema is:\n{derived}",
        path.display()
    );
}
