//! Machine sizes: the `size` attribute (`2cpu-4gb`, `1cpu-512mb`) as vCPUs and memory.

use std::fmt;

/// vCPUs and memory of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Virtual CPUs, 1 to 256.
    pub vcpus: u32,
    /// Memory in MiB, 128 MiB to 1 TiB.
    pub memory_mib: u64,
}

/// What `size` accepts, for error messages.
pub const SIZE_FORMAT: &str = "`<N>cpu-<M>gb` or `<N>cpu-<M>mb`, e.g. `2cpu-4gb` or `1cpu-512mb` (1-256 vCPUs, 128 MiB to 1024 GiB)";

impl Size {
    /// Parse `2cpu-4gb`; case-insensitive, `gb`/`g`/`gib` and `mb`/`m`/`mib` accepted.
    pub fn parse(s: &str) -> Result<Size, String> {
        let bad = || format!("size `{s}` is not {SIZE_FORMAT}");
        let lower = s.trim().to_ascii_lowercase();
        let (cpu, mem) = lower.split_once('-').ok_or_else(bad)?;
        let vcpus: u32 = cpu
            .strip_suffix("cpu")
            .or_else(|| cpu.strip_suffix("cpus"))
            .or_else(|| cpu.strip_suffix("vcpu"))
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        let digits = mem.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &mem[digits.len()..];
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let memory_mib = match unit {
            "gb" | "g" | "gib" => n.checked_mul(1024).ok_or_else(bad)?,
            "mb" | "m" | "mib" => n,
            _ => return Err(bad()),
        };
        if !(1..=256).contains(&vcpus) || !(128..=1024 * 1024).contains(&memory_mib) {
            return Err(bad());
        }
        Ok(Size { vcpus, memory_mib })
    }
}

impl fmt::Display for Size {
    /// The canonical form: `2cpu-4gb` when the memory is whole GiB, else `2cpu-1536mb`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.memory_mib.is_multiple_of(1024) {
            write!(f, "{}cpu-{}gb", self.vcpus, self.memory_mib / 1024)
        } else {
            write!(f, "{}cpu-{}mb", self.vcpus, self.memory_mib)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let s = |v, m| Size {
            vcpus: v,
            memory_mib: m,
        };
        assert_eq!(Size::parse("2cpu-4gb"), Ok(s(2, 4096)));
        assert_eq!(Size::parse("1cpu-512mb"), Ok(s(1, 512)));
        assert_eq!(Size::parse("4CPU-8GiB"), Ok(s(4, 8192)));
        assert_eq!(Size::parse("2cpus-1536m"), Ok(s(2, 1536)));
        assert_eq!(s(2, 4096).to_string(), "2cpu-4gb");
        assert_eq!(s(1, 1536).to_string(), "1cpu-1536mb");
    }

    #[test]
    fn rejects_others_with_the_format() {
        for bad in [
            "t3.medium",
            "2cpu",
            "2cpu-4tb",
            "0cpu-4gb",
            "2cpu-64mb",
            "x-4gb",
            "2cpu-gb",
            "",
            "2cpu-99999999999999999999gb",
        ] {
            let e = Size::parse(bad).expect_err(bad);
            assert!(e.contains("2cpu-4gb"), "{e}");
        }
    }
}
