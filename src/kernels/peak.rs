//! Measured multiply-accumulate peak of each path's inner instruction, for honest "% of peak"
//! figures in benchmarks.
//!
//! Each measurement runs the path's core instruction on 12 independent register accumulators
//! (no loads) for about 20 ms and counts `u8×i8` multiply-accumulates: `vpdpbusd zmm` = 64,
//! VEX `vpdpbusd ymm` = 32, `vpmaddwd ymm` = 16 (the AVX2 kernel also needs one `vpaddd` per
//! `vpmaddwd`, on other ports), `tdpbusd` = 16·16·64. The scalar and emulated paths have no such
//! instruction and report `None`.

use std::time::Instant;

use super::{Isa, available_isas};
use crate::{Error, Result};

/// Iterations of the 12-instruction loop per timing.
const ITERS: u64 = 1 << 20;

/// The best of three timings of `isa`'s inner instruction, in GMAC/s for one core.
pub fn measure_peak_gmacs(isa: Isa) -> Result<Option<f64>> {
    if !available_isas().contains(&isa) {
        return Err(Error::IsaUnavailable(isa.name().to_string()));
    }
    let Some((macs_per_iter, run)) = loop_of(isa) else {
        return Ok(None);
    };
    let best = (0..3)
        .map(|_| {
            let start = Instant::now();
            run(ITERS);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Ok(Some((ITERS * macs_per_iter) as f64 / best / 1e9))
}

/// MACs per loop iteration and the loop, for the paths that have one.
#[cfg(target_arch = "x86_64")]
fn loop_of(isa: Isa) -> Option<(u64, fn(u64))> {
    match isa {
        Isa::Scalar | Isa::AmxEmulated => None,
        Isa::Avx2 => Some((12 * 16, x86::avx2)),
        Isa::AvxVnni => Some((12 * 32, x86::avxvnni)),
        Isa::Avx512Vnni => Some((12 * 64, x86::avx512vnni)),
        Isa::Amx => Some((4 * 16 * 16 * 64, x86::amx)),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn loop_of(_isa: Isa) -> Option<(u64, fn(u64))> {
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    /// The instruction `$op` written for destination registers 0 to 11.
    macro_rules! on_twelve {
        ($op:literal, $sources:literal) => {
            concat!(
                $op, 0, $sources, "\n", $op, 1, $sources, "\n", $op, 2, $sources, "\n", $op, 3,
                $sources, "\n", $op, 4, $sources, "\n", $op, 5, $sources, "\n", $op, 6, $sources,
                "\n", $op, 7, $sources, "\n", $op, 8, $sources, "\n", $op, 9, $sources, "\n", $op,
                10, $sources, "\n", $op, 11, $sources, "\n",
            )
        };
    }

    /// Runs `on_twelve!($op, $sources)` `$iters` times.
    macro_rules! timed_loop {
        ($iters:expr, $op:literal, $sources:literal) => {
            // SAFETY: the loop only writes vector registers (all call-clobbered, declared by
            // `clobber_abi`) and its counter; callers run it only when the path's features
            // were detected.
            unsafe {
                asm!("2:", on_twelve!($op, $sources), "dec rax", "jnz 2b",
                     inout("rax") $iters.max(1) => _, clobber_abi("C"), options(nomem, nostack));
            }
        };
    }

    pub(super) fn avx512vnni(iters: u64) {
        timed_loop!(iters, "vpdpbusd zmm", ", zmm30, zmm31");
    }

    pub(super) fn avxvnni(iters: u64) {
        timed_loop!(iters, "{{vex}} vpdpbusd ymm", ", ymm14, ymm15");
    }

    pub(super) fn avx2(iters: u64) {
        timed_loop!(iters, "vpmaddwd ymm", ", ymm14, ymm15");
    }

    /// Four `tdpbusd` on register tiles per iteration (tile state configured, then released).
    pub(super) fn amx(iters: u64) {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for tile in 0..8 {
            config.0[16 + 2 * tile] = 64;
            config.0[48 + tile] = 16;
        }
        // SAFETY: only called when AMX is usable (CPU, OS and process permission); the tile
        // registers are not used by compiled code and are released at the end.
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                "2:",
                "tdpbusd tmm0, tmm4, tmm6", "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6", "tdpbusd tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                "tilerelease",
                cfg = in(reg) &config, n = inout(reg) iters.max(1) => _, options(nostack),
            );
        }
    }
}
