//! The base image: a local file, or an https URL downloaded once into the cache
//! (streamed, with a progress bar, SHA-256 checked when given), and what kind of disk
//! image it is (qcow2 or raw, and its virtual size).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{ImageSource, LibvirtConfig};
use crate::error::{LibvirtError, Result};

/// A local image file ready to be imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalImage {
    /// The file.
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: &'static str,
    /// Its size on disk, in bytes (what is uploaded).
    pub file_len: u64,
    /// The disk size the guest sees, in bytes.
    pub virtual_size: u64,
}

/// The name of the base volume in a pool for an image setting: stable per image (and
/// checksum), so a changed image gets a new volume next to the old one.
pub fn base_volume_name(image: &str, sha256: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(image.as_bytes());
    if let Some(s) = sha256 {
        h.update(b"\0");
        h.update(s.as_bytes());
    }
    let hex = hex(&h.finalize());
    format!("base-{}", &hex[..12])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read the format and virtual size from the file's header.
pub fn probe(path: &Path) -> Result<LocalImage> {
    let io = |source| LibvirtError::File {
        what: "cannot read the image".into(),
        path: path.display().to_string(),
        source,
    };
    let mut f = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LibvirtError::Image(format!(
                "the image `{}` does not exist: download the Flatcar QEMU image (flatcar_production_qemu_image.img) there, or point `[provider.libvirt] image` at it",
                path.display()
            ))
        } else {
            io(e)
        }
    })?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut head = [0u8; 32];
    let n = read_full(&mut f, &mut head).map_err(io)?;
    if n >= 32 && head[..4] == *b"QFI\xfb" {
        let mut size = [0u8; 8];
        size.copy_from_slice(&head[24..32]);
        return Ok(LocalImage {
            path: path.to_path_buf(),
            format: "qcow2",
            file_len,
            virtual_size: u64::from_be_bytes(size),
        });
    }
    if n >= 3 && head[..3] == *b"BZh" {
        return Err(LibvirtError::Image(format!(
            "the image `{}` is bzip2-compressed: decompress it first (`bunzip2`) and point `[provider.libvirt] image` at the .img",
            path.display()
        )));
    }
    if file_len == 0 {
        return Err(LibvirtError::Image(format!(
            "the image `{}` is empty",
            path.display()
        )));
    }
    Ok(LocalImage {
        path: path.to_path_buf(),
        format: "raw",
        file_len,
        virtual_size: file_len,
    })
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(hex(&h.finalize()))
}

/// The image as a local file: the path itself, or the download in the cache (fetched
/// when missing or when its checksum does not match). Blocking.
pub fn local_image(config: &LibvirtConfig) -> Result<LocalImage> {
    match &config.image_source {
        ImageSource::Path(p) => {
            let img = probe(p)?;
            if let Some(want) = &config.image_sha256 {
                check_sum(p, want)?;
            }
            Ok(img)
        }
        ImageSource::Url(url) => {
            let file = cached_path(&config.image_cache, url);
            let fresh = match (&config.image_sha256, file.exists()) {
                (_, false) => false,
                (None, true) => true,
                (Some(want), true) => sha256_file(&file).is_ok_and(|got| &got == want),
            };
            if !fresh {
                download(url, &file, config.image_sha256.as_deref())?;
            }
            probe(&file)
        }
    }
}

fn check_sum(path: &Path, want: &str) -> Result<()> {
    let got = sha256_file(path).map_err(|source| LibvirtError::File {
        what: "cannot read the image".into(),
        path: path.display().to_string(),
        source,
    })?;
    if got != want {
        return Err(LibvirtError::Image(format!(
            "the image `{}` has SHA-256 {got}, not the {want} that `image_sha256` names: fetch the right image or fix `image_sha256`",
            path.display()
        )));
    }
    Ok(())
}

/// Where a URL's download is kept: `<cache>/<hash>-<file name>`.
pub fn cached_path(cache: &Path, url: &str) -> PathBuf {
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("image");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    cache.join(format!("{}-{name}", &hex(&h.finalize())[..12]))
}

/// Download `url` to `dest` through a `.part` file, streaming, hashing as it goes and
/// showing a progress bar on a terminal; the file appears only when complete and, when
/// `sha256` is given, only when it matches.
pub fn download(url: &str, dest: &Path, sha256: Option<&str>) -> Result<()> {
    let io = |what: &str, path: &Path, source| LibvirtError::File {
        what: what.to_string(),
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| io("cannot make the image cache folder", dir, e))?;
    }
    let agent = ureq::Agent::new_with_defaults();
    let resp = agent.get(url).call().map_err(|e| {
        LibvirtError::Image(format!(
            "cannot download the image `{url}`: {e}; check the URL and the network, or download it yourself and set `image` to its path"
        ))
    })?;
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "downloading {msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    let part = dest.with_extension("part");
    let mut out = File::create(&part).map_err(|e| io("cannot write the download", &part, e))?;
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            LibvirtError::Image(format!(
                "the download of `{url}` broke off after {total} bytes: {e}"
            ))
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| io("cannot write the download", &part, e))?;
        total += n as u64;
        bar.set_position(total);
    }
    bar.finish_and_clear();
    out.sync_all()
        .map_err(|e| io("cannot write the download", &part, e))?;
    drop(out);
    if let Some(n) = len
        && n != total
    {
        let _ = std::fs::remove_file(&part);
        return Err(LibvirtError::Image(format!(
            "the download of `{url}` ended after {total} of {n} bytes: try again"
        )));
    }
    let got = hex(&h.finalize());
    if let Some(want) = sha256
        && got != want
    {
        let _ = std::fs::remove_file(&part);
        return Err(LibvirtError::Image(format!(
            "the image downloaded from `{url}` has SHA-256 {got}, not the {want} that `image_sha256` names: check both"
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| io("cannot move the download into place", dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback answering every request with `body`.
    fn serve(body: Vec<u8>, requests: usize) -> (String, std::thread::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!(
            "http://{}/images/flatcar.img",
            l.local_addr().expect("addr")
        );
        let h = std::thread::spawn(move || {
            let mut served = 0;
            for s in l.incoming().take(requests) {
                let Ok(mut s) = s else { break };
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
                served += 1;
            }
            served
        });
        (url, h)
    }

    fn qcow2_header(virtual_size: u64) -> Vec<u8> {
        let mut v = b"QFI\xfb\0\0\0\x03".to_vec();
        v.resize(24, 0);
        v.extend_from_slice(&virtual_size.to_be_bytes());
        v.resize(4096, 7);
        v
    }

    #[test]
    fn downloads_once_checks_the_sum_and_probes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = qcow2_header(8 << 30);
        let sum = {
            let mut h = Sha256::new();
            h.update(&body);
            hex(&h.finalize())
        };
        let (url, server) = serve(body.clone(), 1);
        let config = LibvirtConfig::from_provider_config(
            &serde_json::from_value(serde_json::json!({
                "image": url, "image_sha256": sum, "image_cache": dir.path().join("cache"),
            }))
            .expect("table"),
            dir.path(),
        )
        .expect("valid");
        let img = local_image(&config).expect("downloaded");
        assert_eq!(img.format, "qcow2");
        assert_eq!(img.virtual_size, 8 << 30);
        assert_eq!(img.file_len, body.len() as u64);
        // The second time it comes from the cache: the server answers only once.
        let again = local_image(&config).expect("cached");
        assert_eq!(again, img);
        assert_eq!(server.join().expect("server"), 1);
    }

    #[test]
    fn a_wrong_checksum_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, server) = serve(b"raw disk bytes".to_vec(), 1);
        let dest = dir.path().join("img");
        let e = download(&url, &dest, Some(&"0".repeat(64))).expect_err("mismatch");
        assert!(e.to_string().contains("image_sha256"), "{e}");
        assert!(!dest.exists() && !dest.with_extension("part").exists());
        server.join().expect("server");
    }

    #[test]
    fn missing_and_compressed_images_say_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = probe(&dir.path().join("nope.img")).expect_err("missing");
        assert!(e.to_string().contains("does not exist"), "{e}");
        let bz = dir.path().join("f.img.bz2");
        std::fs::write(&bz, b"BZh91AY&SY").expect("write");
        let e = probe(&bz).expect_err("compressed");
        assert!(e.to_string().contains("bunzip2"), "{e}");
        let raw = dir.path().join("raw.img");
        std::fs::write(&raw, vec![0u8; 1000]).expect("write");
        let r = probe(&raw).expect("raw");
        assert_eq!((r.format, r.virtual_size), ("raw", 1000));
        assert_ne!(
            base_volume_name("a", None),
            base_volume_name("a", Some("b"))
        );
    }
}
