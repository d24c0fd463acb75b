//! Runs every `.slt` file under `sql-transforms/` against the transform
//! beside it.

use std::path::Path;

use lily_transforms::slt::{discover_slt, run_slt};

#[tokio::main]
async fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = discover_slt(dir).expect("listing .slt files");
    let (mut passed, mut failed) = (0, 0);
    for (path, transform) in &files {
        let shown = path.strip_prefix(dir).unwrap_or(path).display();
        match run_slt(path, transform.as_ref()).await {
            Ok(()) => {
                println!("ok      {shown}");
                passed += 1;
            }
            Err(e) => {
                println!("FAILED  {shown}\n{e}");
                failed += 1;
            }
        }
    }
    println!("slt: {passed} passed, {failed} failed");
    if failed > 0 || files.is_empty() {
        std::process::exit(1);
    }
}
