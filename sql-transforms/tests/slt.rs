//! Runs every `.slt` file under `sql-transforms/` against the transform
//! beside it.

use std::path::Path;

#[tokio::main]
async fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (passed, failed) = lily_transforms::slt::run_all(dir)
        .await
        .expect("listing .slt files");
    println!("slt: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}
