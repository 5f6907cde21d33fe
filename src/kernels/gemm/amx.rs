//! AMX-INT8 microkernel: 32 rows × 32 columns with `tdpbusd`, through `asm!`.
//!
//! Tiles: `tmm0..3` accumulate the four 16×16 `i32` quarters of C, `tmm4/5` hold 16 rows × 64
//! `u8` of A (rows 0-15 and 16-31), `tmm6/7` hold 16 `k`-groups × 16 columns × 4 `i8` of B
//! (columns 0-15 and 16-31) — exactly 16 consecutive groups of a packed panel, rows
//! `GROUP_STRIDE` bytes apart. A is packed by the driver (uniform stride, `K` padded to 64,
//! rows padded to 32). C goes to memory, gets the bias, and is requantized by the AVX-512
//! epilogue. No AMX machine is available to test this here: dispatch checks it bit for bit
//! against the scalar kernel before first use and drops it if it disagrees.

use std::arch::asm;
use std::arch::x86_64::*;

use super::avx512vnni::requant_store;
use super::{Kernel, Tile};
use crate::kernels::Isa;
use crate::kernels::pack::{GROUP_STRIDE, K_ALIGN, KR};

const MR: usize = 32;
const NR: usize = 32;

/// Registry entry of the AMX kernel.
pub(super) static KERNEL: Kernel = Kernel {
    isa: Isa::Amx,
    mr: MR,
    nr: NR,
    k_align: K_ALIGN,
    packed_a: true,
    tile,
};

/// Palette 1; tiles 0-7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Whether the CPU has AMX-TILE and AMX-INT8, the OS enabled the tile state, and Linux granted
/// this process tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
pub(crate) fn usable() -> bool {
    const AMX_TILE: u32 = 1 << 24;
    const AMX_INT8: u32 = 1 << 25;
    const OSXSAVE: u32 = 1 << 27;
    const XTILE_STATE: u64 = (1 << 17) | (1 << 18);
    let (leaf1, leaf7) = (__cpuid(1), __cpuid_count(7, 0));
    if leaf7.edx & (AMX_TILE | AMX_INT8) != AMX_TILE | AMX_INT8 || leaf1.ecx & OSXSAVE == 0 {
        return false;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so `xgetbv` with ECX = 0 is allowed; it only reads XCR0.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    let xcr0 = u64::from(hi) << 32 | u64::from(lo);
    xcr0 & XTILE_STATE == XTILE_STATE && request_tile_data()
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call only updates this process's permitted XSAVE
    // features; `syscall` clobbers rcx and r11, declared below.
    unsafe {
        asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// # Safety
/// The [`Tile`] contract with `rows[0..32]` `lda` bytes apart and `k_groups % 16 == 0`, on a
/// CPU and process where [`usable`] returned true.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile(t: &Tile) {
    #[repr(C, align(64))]
    struct Acc([[i32; NR]; MR]);
    let mut c = Acc([[0; NR]; MR]);
    debug_assert!(t.k_groups.is_multiple_of(K_ALIGN / KR));
    // SAFETY: rows 0..32 are readable for `k_groups·4` bytes, `lda` apart (tile contract), so
    // every A tile load stays inside them; the panel holds `k_groups` groups of at least 32
    // columns, so every B tile row (64 bytes at a 256-byte stride) is inside it; `c` is 32 rows
    // of 128 bytes. Tile registers are not used by compiled code; `tilerelease` frees them.
    unsafe {
        let a0 = *t.rows;
        asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm5, [{a16} + {lda}*1]",
            "tileloadd tmm6, [{b} + {bs}*1]",
            "tileloadd tmm7, [{b} + {bs}*1 + 64]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a16}, 64",
            "add {b}, {bstep}",
            "dec {chunks}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "add {c}, {half}",
            "tilestored [{c} + {cs}*1], tmm2",
            "tilestored [{c} + {cs}*1 + 64], tmm3",
            "tilerelease",
            cfg = in(reg) &CONFIG,
            a0 = inout(reg) a0 => _,
            a16 = inout(reg) a0.add(16 * t.lda) => _,
            lda = in(reg) t.lda,
            b = inout(reg) t.b => _,
            bs = in(reg) GROUP_STRIDE,
            bstep = const 16 * GROUP_STRIDE,
            chunks = inout(reg) t.k_groups / 16 => _,
            c = inout(reg) c.0.as_mut_ptr() => _,
            cs = in(reg) NR * 4,
            half = const 16 * NR * 4,
            options(nostack),
        );
        let bias: [__m512i; 2] =
            std::array::from_fn(|v| _mm512_loadu_si512(t.bias.add(16 * v).cast()));
        for (i, row) in c.0.iter().enumerate().take(t.m) {
            for (v, &bias) in bias.iter().enumerate() {
                let acc = _mm512_add_epi32(_mm512_loadu_si512(row[16 * v..].as_ptr().cast()), bias);
                let n = t.n.saturating_sub(16 * v).min(16);
                requant_store(acc, t, 16 * v, t.out.add(i * t.ldc + 16 * v), n);
            }
        }
    }
}
