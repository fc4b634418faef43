//! A class-per-folder image tree whose one image is the input (named `.jpg` when it starts
//! like a JPEG, `.png` otherwise), beside valid images of the same size.
#![no_main]

use haba::data::FolderOptions;
use haba::data::folder::load;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// A 6x5 PNG whose pixels start at `v` (the seeds are images of this size).
fn png(v: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([v, x as u8 * 40, y as u8 * 50]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fuzz_target!(|bytes: &[u8]| {
    let root = common::scratch("image_folder", |root| {
        let good = png(100);
        for split in ["train", "test"] {
            for class in ["cat", "dog"] {
                let dir = root.join(split).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("0.png"), &good).unwrap();
            }
        }
    });
    let name = if bytes.starts_with(&[0xff, 0xd8]) {
        "1.jpg"
    } else {
        "1.png"
    };
    let victim = root.join("train").join("dog").join(name);
    std::fs::write(&victim, bytes).unwrap();
    let _ = load(root, &FolderOptions::default());
    let resized = FolderOptions {
        resize: Some((4, 4)),
    };
    let _ = load(root, &resized);
    // The next input meets the valid tree alone.
    std::fs::remove_file(&victim).unwrap();
});
