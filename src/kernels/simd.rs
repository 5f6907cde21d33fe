//! One portable loop body compiled for several instruction-set tiers.
//!
//! The elementwise ops, pooling and the depthwise convolution are written once, in plain Rust
//! with exactly the scalar arithmetic they document, and compiled three times: for the baseline
//! target, for AVX2+FMA and for AVX-512. Rust never reassociates or contracts floating-point
//! operations, so the vectorised copies give the same bits as the scalar one; only speed
//! differs.

use super::Isa;

/// The instruction-set tier a portable body runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// The baseline target (x86-64: SSE2).
    Base,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F/BW/VL + AVX2 + FMA.
    Avx512,
}

impl Tier {
    /// The tier used together with an ISA path. Every ISA that `available_isas` reports implies
    /// the features of its tier (see `isa::cpu_supports`).
    pub(crate) fn of(isa: Isa) -> Tier {
        match isa {
            Isa::Scalar | Isa::AmxEmulated => Tier::Base,
            Isa::Avx2 | Isa::AvxVnni => Tier::Avx2,
            Isa::Avx512Vnni | Isa::Amx => Tier::Avx512,
        }
    }
}

/// Defines `fn name(tier: Tier, args...)` running `body` compiled for `tier`.
///
/// Only call the generated function with a tier obtained from [`Tier::of`] on an ISA returned
/// by `available_isas` (or `active_isa`): that is what makes the feature-enabled copies sound.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(tier: $crate::kernels::simd::Tier, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            match tier {
                $crate::kernels::simd::Tier::Base => body($($arg),*),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the tier comes from an available ISA, which implies AVX2 and FMA.
                $crate::kernels::simd::Tier::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the tier comes from an available ISA, which implies AVX-512 F/BW/VL.
                $crate::kernels::simd::Tier::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(not(target_arch = "x86_64"))]
                _ => body($($arg),*),
            }
        }
    };
}

pub(crate) use multiversion;
