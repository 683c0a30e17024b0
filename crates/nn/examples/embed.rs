//! Print one normalised all-MiniLM-L6-v2 embedding per text as JSON lines.
//!
//! `cargo run --release -p braid-nn --example embed -- [--device cpu|cuda|auto] [--model DIR] TEXT...`

use braid_nn::SentenceEmbedder;
use braid_runtime::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut device, mut dir, mut texts) = ("auto".to_string(), "models/all-MiniLM-L6-v2".to_string(), Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => device = args.next().ok_or("--device needs a value")?,
            "--model" => dir = args.next().ok_or("--model needs a value")?,
            _ => texts.push(a),
        }
    }
    let model = SentenceEmbedder::load(&dir, &Device::parse(&device)?)?;
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    for (t, e) in texts.iter().zip(model.embed(&refs)?) {
        println!("{}", serde_json::json!({ "text": t, "embedding": e }));
    }
    Ok(())
}
