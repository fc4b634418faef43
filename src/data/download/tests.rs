//! Downloads against a tiny HTTP/1.1 server on 127.0.0.1, and archives built here.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::*;

/// Serves `files` (path -> body) for at most `max_requests` connections or 30 seconds,
/// answering 404 for other paths; returns the base URL.
fn serve(files: HashMap<String, Vec<u8>>, max_requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < max_requests && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    answer(stream, &files);
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(_) => break,
            }
        }
    });
    format!("http://{addr}")
}

fn answer(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body) = match files.get(&path) {
        Some(body) => ("200 OK", body.clone()),
        None => ("404 Not Found", b"no such file".to_vec()),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(header.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("haba-dl-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One ustar header block for `name`, of type `kind`, announcing `size` bytes.
fn tar_header(name: &str, size: usize, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A gzipped tar of `entries` (name, data); names ending in `/` become directories.
fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, data) in entries {
        let kind = if name.ends_with('/') { b'5' } else { b'0' };
        tar.extend_from_slice(&tar_header(name, data.len(), kind));
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

#[test]
fn good_file_lands_under_its_final_name() {
    let body = b"The quick brown fox jumps over the lazy dog".to_vec();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let base = serve(
        HashMap::from([
            ("/fox.txt".to_string(), body.clone()),
            ("/big.bin".to_string(), big.clone()),
        ]),
        2,
    );
    let dir = temp_dir("good");
    // The published MD5 of this sentence, so the MD5 path is checked end to end.
    let dest = dir.join("fox.txt");
    fetch_verified(
        &format!("{base}/fox.txt"),
        &dest,
        Checksum::Md5("9E107D9D372BB6826BD81D3542A419D6"),
    )
    .expect("fox.txt downloads and verifies");
    assert_eq!(fs::read(&dest).unwrap(), body);

    let dest = dir.join("sub").join("big.bin");
    fetch_verified(
        &format!("{base}/big.bin"),
        &dest,
        Checksum::Sha256(&sha256_hex(&big)),
    )
    .expect("big.bin downloads and verifies");
    assert_eq!(fs::read(&dest).unwrap(), big);
    assert_eq!(listing(&dir), ["fox.txt", "sub"]);
    assert_eq!(listing(&dir.join("sub")), ["big.bin"]);
    assert!(file_matches(&dest, Checksum::Size(big.len() as u64)).unwrap());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_body_is_rejected_and_deleted() {
    let mut body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let expected = sha256_hex(&body);
    body[5_000] ^= 1;
    let found = sha256_hex(&body);
    let base = serve(HashMap::from([("/data.bin".to_string(), body)]), 1);
    let dir = temp_dir("corrupt");
    let url = format!("{base}/data.bin");
    let err = fetch_verified(&url, &dir.join("data.bin"), Checksum::Sha256(&expected))
        .expect_err("a flipped bit must fail the check");
    match &err {
        DataError::Checksum {
            url: u,
            expected: e,
            found: f,
        } => {
            assert_eq!(u, &url);
            assert_eq!(e, &format!("sha256 {expected}"));
            assert_eq!(f, &format!("sha256 {found}"));
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&url) && message.contains(&expected) && message.contains(&found));
    assert!(listing(&dir).is_empty(), "left behind: {:?}", listing(&dir));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn missing_file_is_a_clear_404() {
    let base = serve(HashMap::new(), 1);
    let dir = temp_dir("404");
    let url = format!("{base}/nope.gz");
    let err =
        fetch_verified(&url, &dir.join("nope.gz"), Checksum::Size(1)).expect_err("a 404 must fail");
    let message = err.to_string();
    assert!(matches!(err, DataError::Download { .. }), "{err:?}");
    assert!(
        message.contains("404") && message.contains(&url),
        "{message}"
    );
    assert!(listing(&dir).is_empty());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn tar_gz_is_extracted() {
    let long_name = format!("deep/{}/x.bin", "d".repeat(120));
    let mut tar = Vec::new();
    // A GNU long-name record for a path that does not fit the 100-byte field.
    tar.extend_from_slice(&tar_header("././@LongLink", long_name.len() + 1, b'L'));
    tar.extend_from_slice(long_name.as_bytes());
    tar.push(0);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&tar_header("ignored", 3, b'0'));
    tar.extend_from_slice(b"xyz");
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    let dir = temp_dir("tar");
    let written = extract_tar(tar.as_slice(), Path::new("mem.tar"), &dir).unwrap();
    assert_eq!(written, [PathBuf::from(&long_name)]);
    assert_eq!(fs::read(dir.join(&long_name)).unwrap(), b"xyz");

    let a: Vec<u8> = (0..1_300u32).map(|i| (i % 7) as u8).collect();
    let archive = dir.join("t.tar.gz");
    fs::write(
        &archive,
        tar_gz(&[
            ("top/", b""),
            ("top/a.bin", &a),
            ("top/empty.txt", b""),
            ("top/nested/b.txt", b"hello"),
        ]),
    )
    .unwrap();
    let out = dir.join("out");
    let written = extract_tar_gz(&archive, &out).unwrap();
    assert_eq!(
        written,
        ["top/a.bin", "top/empty.txt", "top/nested/b.txt"].map(PathBuf::from)
    );
    assert_eq!(fs::read(out.join("top/a.bin")).unwrap(), a);
    assert_eq!(fs::read(out.join("top/empty.txt")).unwrap(), b"");
    assert_eq!(fs::read(out.join("top/nested/b.txt")).unwrap(), b"hello");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn tar_refuses_paths_outside_the_destination_and_bad_headers() {
    let dir = temp_dir("tar-evil");
    for name in ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"] {
        let archive = dir.join("evil.tar.gz");
        fs::write(&archive, tar_gz(&[(name, b"boom")])).unwrap();
        let err = extract_tar_gz(&archive, &dir.join("out")).expect_err(name);
        assert!(matches!(err, DataError::Format { .. }), "{name}: {err:?}");
    }
    assert!(!dir.join("evil.txt").exists());

    let mut tar = tar_header("a.txt", 4, b'0').to_vec();
    tar[0] = b'b'; // the stored header checksum no longer matches
    tar.extend_from_slice(&[b'x'; 512]);
    let err = extract_tar(tar.as_slice(), Path::new("bad.tar"), &dir.join("out2"))
        .expect_err("corrupt header");
    assert!(err.to_string().contains("checksum"), "{err}");

    // Cut short inside a member.
    let mut tar = tar_header("a.txt", 4000, b'0').to_vec();
    tar.extend_from_slice(&[b'x'; 512]);
    assert!(extract_tar(tar.as_slice(), Path::new("short.tar"), &dir.join("out3")).is_err());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn dataset_download_unpacks_via_a_mirror_and_then_stays_offline() {
    let batch: Vec<u8> = (0..2_000u32).map(|i| (i % 253) as u8).collect();
    let archive = tar_gz(&[
        ("toy-bin/", b""),
        ("toy-bin/data.bin", &batch),
        ("toy-bin/readme.txt", b"toy"),
    ]);
    let digest = sha256_hex(&archive);
    let files = [RemoteFile {
        name: "toy.tar.gz",
        checksum: Checksum::Sha256(&digest),
    }];
    let unpacked = [("toy-bin/data.bin", Some(batch.len() as u64))];
    let source = Source {
        name: "toy",
        base_url: "http://127.0.0.1:9/unused/",
        files: &files,
        unpacked: &unpacked,
    };
    // One request only: the second call must find the data and not ask again.
    let base = serve(HashMap::from([("/toy/toy.tar.gz".to_string(), archive)]), 1);
    let root = temp_dir("dataset");
    let dir = download_source(&source, &root, Some(&format!("{base}/"))).unwrap();
    assert_eq!(dir, root.join("toy"));
    assert_eq!(fs::read(dir.join("toy-bin/data.bin")).unwrap(), batch);
    assert_eq!(
        listing(&dir),
        ["toy-bin"],
        "archive, .part and staging are gone"
    );
    let again = download_source(&source, &root, Some("http://127.0.0.1:9")).unwrap();
    assert_eq!(again, dir);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn known_datasets_resolve_by_loose_name() {
    assert_eq!(
        find_source("FashionMNIST").map(|s| s.name),
        Some("fashion-mnist")
    );
    assert_eq!(find_source("CIFAR-10").map(|s| s.name), Some("cifar10"));
    assert_eq!(find_source("cifar_100").map(|s| s.name), Some("cifar100"));
    assert!(matches!(
        download("imagenet", Path::new("/nonexistent"), None),
        Err(DataError::Unknown(_))
    ));
    for source in SOURCES {
        assert!(source.base_url.ends_with('/'), "{}", source.name);
        for file in source.files {
            if let Checksum::Md5(hex) = file.checksum {
                assert!(hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()));
            }
        }
    }
}
