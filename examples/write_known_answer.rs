// Writes the known-answer model set (test fixtures, NOT trained) to a directory:
//   cargo run --example write_known_answer -- models/known-answer --force
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "models/known-answer".into()));
    let force = args.any(|a| a == "--force");
    let set = gstclasssr::known_answer::model_set();
    if let Err(e) = set.save_dir(&dir, force) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!("wrote the known-answer model set to {}", dir.display());
}
