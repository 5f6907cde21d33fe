//! Instruction-set paths: detection (once), self-check, selection and forcing.

use std::cell::Cell;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An instruction-set path of the kernels.
///
/// Ordered from the most portable to the fastest, then the test paths; [`active_isa`] picks
/// the last available one that is not [`Isa::emulated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Isa {
    /// Portable Rust; the fallback and the test oracle.
    Scalar,
    /// AVX2 + FMA: exact `u8×i8` products widened to `i16` and summed with `vpmaddwd`, or, for
    /// 7-bit activations (the `x86`/`fbgemm` presets), `vpmaddubsw` on bytes read in place.
    Avx2,
    /// AVX-VNNI (VEX-encoded 256-bit `vpdpbusd`).
    AvxVnni,
    /// AVX-512 VNNI (512-bit `vpdpbusd`).
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbusd`), with AVX-512 for the epilogue.
    Amx,
    /// The AMX kernel on a scalar model of the tile unit: runs anywhere, slowly, so the AMX
    /// code is tested on every CPU. Never picked automatically.
    AmxEmulated,
}

impl Isa {
    /// Every path, in order.
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Amx,
        Isa::AmxEmulated,
    ];

    /// The lower-case name used by `BURN_QUANTIZE_ISA` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
            Isa::AmxEmulated => "amx-emulated",
        }
    }

    /// Whether this path models hardware in software (for tests, never for speed).
    pub fn emulated(self) -> bool {
        self == Isa::AmxEmulated
    }

    /// Parses a name as written by [`Isa::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The paths this CPU (and OS) can run, detected once.
///
/// `Scalar` is always present. Each SIMD path is run once on a small fixed GEMM and compared
/// bit for bit with the scalar kernel; a path that disagrees is dropped (and reported on
/// stderr once), so a mistake in a path that could not be tested elsewhere cannot return
/// wrong numbers.
pub fn available_isas() -> Vec<Isa> {
    static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
    AVAILABLE
        .get_or_init(|| {
            Isa::ALL
                .into_iter()
                .filter(|&isa| cpu_supports(isa))
                .filter(|&isa| {
                    match super::gemm::self_check(isa).and_then(|()| super::wide::self_check(isa)) {
                        Ok(()) => true,
                        Err(why) => {
                            eprintln!("burn-quantize: disabling the {isa} kernels: {why}");
                            false
                        }
                    }
                })
                .collect()
        })
        .clone()
}

/// The path the kernels use on this thread: the one forced by [`with_isa`], else the one named
/// by the `BURN_QUANTIZE_ISA` environment variable, else the best available.
pub fn active_isa() -> Isa {
    FORCED
        .with(Cell::get)
        .or_else(env_isa)
        .unwrap_or_else(best_isa)
}

/// Runs `f` with the kernels forced onto `isa` on this thread (for tests and benchmarks).
///
/// Kernel calls made inside `f` resolve their path on the calling thread and carry it into
/// their worker threads. Returns `Err(IsaUnavailable)` if this CPU cannot run `isa`.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> Result<R> {
    if !available_isas().contains(&isa) {
        return Err(Error::IsaUnavailable(isa.name().to_string()));
    }
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|forced| forced.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|forced| forced.replace(Some(isa))));
    Ok(f())
}

thread_local! {
    static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
}

fn best_isa() -> Isa {
    available_isas()
        .into_iter()
        .filter(|isa| !isa.emulated())
        .max()
        .unwrap_or(Isa::Scalar)
}

/// `BURN_QUANTIZE_ISA`, read once; an unknown or unavailable name is reported and ignored.
fn env_isa() -> Option<Isa> {
    static ENV: OnceLock<Option<Isa>> = OnceLock::new();
    *ENV.get_or_init(|| {
        let value = std::env::var("BURN_QUANTIZE_ISA").ok()?;
        match Isa::from_name(&value) {
            Some(isa) if available_isas().contains(&isa) => Some(isa),
            _ => {
                eprintln!(
                    "burn-quantize: BURN_QUANTIZE_ISA={value} is not an available path \
                     (available: {:?}); using the best available",
                    available_isas()
                );
                None
            }
        }
    })
}

/// Whether the CPU and OS support `isa` (before the self-check).
#[cfg(target_arch = "x86_64")]
fn cpu_supports(isa: Isa) -> bool {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    match isa {
        Isa::Scalar => true,
        Isa::Avx2 => avx2,
        Isa::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
        Isa::Avx512Vnni => avx512 && is_x86_feature_detected!("avx512vnni"),
        Isa::Amx => avx512 && super::gemm::amx_usable(),
        Isa::AmxEmulated => true,
    }
}

/// Whether the CPU and OS support `isa`: only the portable paths exist off x86-64 for now
/// (an aarch64 NEON kernel would be detected here and registered in `gemm`).
#[cfg(not(target_arch = "x86_64"))]
fn cpu_supports(isa: Isa) -> bool {
    matches!(isa, Isa::Scalar | Isa::AmxEmulated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
            assert_eq!(Isa::from_name(&isa.name().to_uppercase()), Some(isa));
        }
        assert_eq!(Isa::from_name("neon"), None);
    }

    #[test]
    fn forcing_restores_the_previous_path() {
        let before = active_isa();
        let inside = with_isa(Isa::Scalar, active_isa).expect("scalar is always available");
        assert_eq!(inside, Isa::Scalar);
        assert_eq!(active_isa(), before);
        assert!(available_isas().contains(&Isa::Scalar));
    }

    /// The self-check guards users against a wrong kernel; in the tests a path it drops is a
    /// failure, not a silently skipped path.
    #[test]
    fn every_path_the_cpu_supports_passes_the_self_check() {
        for isa in Isa::ALL.into_iter().filter(|&isa| cpu_supports(isa)) {
            assert!(
                available_isas().contains(&isa),
                "{isa}: supported by this CPU but dropped by the self-check"
            );
        }
    }

    #[test]
    fn forcing_an_unavailable_path_is_an_error() {
        for isa in Isa::ALL
            .into_iter()
            .filter(|isa| !available_isas().contains(isa))
        {
            let forced = with_isa(isa, active_isa);
            assert!(matches!(forced, Err(Error::IsaUnavailable(name)) if name == isa.name()));
        }
    }
}
