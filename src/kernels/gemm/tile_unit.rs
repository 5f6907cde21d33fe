//! The AMX tile unit as a trait, so that one GEMM kernel runs on the real tiles or on a model.
//!
//! [`TileUnit`] has one method per instruction the AMX kernel uses (`ldtilecfg`, `tilezero`,
//! `tileloadd`, `tdpbusd`, `tilestored`, `tilerelease`) plus the 16-lane requantizing store
//! that drains a row of `C`. Tile register numbers are const generics because the instructions
//! encode them as immediates. [`Amx`] issues the instructions (one `asm!` each; tile state is
//! architectural and no compiled code touches it, so it lives across the blocks);
//! [`super::tile_emulator::Emulated`] is a scalar model of the same semantics that runs on
//! any CPU and panics where the hardware would fault.

use super::Tile;

/// Tile registers of palette 1.
pub(crate) const TILES: usize = 8;
/// Most rows of a tile in palette 1.
pub(crate) const MAX_ROWS: usize = 16;
/// Most bytes per tile row in palette 1.
pub(crate) const MAX_COLSB: usize = 64;

/// The 64-byte operand of `ldtilecfg`: palette, restart row and each tile's shape.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileConfig {
    /// Palette id (1: 8 tiles of up to 16 × 64 bytes; 0: release the tiles).
    pub(crate) palette: u8,
    /// Row to restart an interrupted load or store at (0 for a fresh configuration).
    pub(crate) start_row: u8,
    /// Must be zero.
    pub(crate) reserved: [u8; 14],
    /// Bytes per row of each tile (only tiles `0..8` exist in palette 1).
    pub(crate) colsb: [u16; 16],
    /// Rows of each tile.
    pub(crate) rows: [u8; 16],
}

impl TileConfig {
    /// Palette 1 with tiles `0..8` all `rows × colsb` bytes.
    pub(crate) const fn uniform(rows: u8, colsb: u16) -> Self {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        let mut t = 0;
        while t < TILES {
            config.colsb[t] = colsb;
            config.rows[t] = rows;
            t += 1;
        }
        config
    }
}

/// The tile instructions the AMX kernel issues, and the requantizing store of its epilogue.
///
/// Every method is `unsafe`: the real unit executes the instruction on raw pointers, so the
/// caller keeps the hardware's rules (a valid configuration loaded, register shapes that
/// match, every row of a load or store inside readable or writable memory). The emulator
/// checks the configuration and shape rules and panics where the hardware raises #GP/#UD.
pub(crate) trait TileUnit {
    /// `ldtilecfg`: loads `config` (palette 1) and zeroes every tile.
    ///
    /// # Safety
    /// `config` is a valid palette-1 configuration; the CPU supports AMX.
    unsafe fn load_config(&mut self, config: &TileConfig);

    /// `tilezero tmmT`.
    ///
    /// # Safety
    /// A configuration is loaded and configures tile `T`.
    unsafe fn zero<const T: u8>(&mut self);

    /// `tileloadd tmmT, [base + stride]`: row `r` comes from the `colsb` bytes at
    /// `base + r·stride`.
    ///
    /// # Safety
    /// Tile `T` is configured and every one of its rows is readable at `base + r·stride`.
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize);

    /// `tdpbusd tmmC, tmmA, tmmB`: `C[i][j] += Σ_k Σ_q u8(A[i][4k+q])·i8(B[k][4j+q])`, in
    /// wrapping `i32`.
    ///
    /// # Safety
    /// `C`, `A`, `B` are distinct configured tiles with `A.rows = C.rows`,
    /// `A.colsb / 4 = B.rows` and `B.colsb = C.colsb`.
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self);

    /// `tilestored [base + stride], tmmT`: row `r` goes to the `colsb` bytes at
    /// `base + r·stride`.
    ///
    /// # Safety
    /// Tile `T` is configured and every one of its rows is writable at `base + r·stride`.
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize);

    /// `tilerelease`: back to the unconfigured state.
    ///
    /// # Safety
    /// The CPU supports AMX.
    unsafe fn release(&mut self);

    /// Requantizes 16 accumulators (bias included) of row `row`, columns `col..col+16` of `t`
    /// as [`crate::kernels::requantize`] does and stores the first `n` bytes at
    /// [`Tile::out_at`] (the accumulators themselves for a [`Tile::raw`] tile).
    ///
    /// # Safety
    /// `t.multipliers` holds `col + 16` values and output row `row` is writable for `n <= 16`
    /// elements from `col`.
    unsafe fn requant_store(&self, acc: &[i32; 16], t: &Tile, row: usize, col: usize, n: usize);
}

/// The real tile unit; a value exists only where AMX was found usable.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Amx(());

#[cfg(target_arch = "x86_64")]
impl Amx {
    /// The unit of this core.
    ///
    /// # Safety
    /// [`super::amx_usable`] returned true, and the caller runs AVX-512 F/BW/VL code
    /// ([`TileUnit::requant_store`] uses it).
    pub(crate) unsafe fn new() -> Self {
        Amx(())
    }
}

#[cfg(target_arch = "x86_64")]
impl TileUnit for Amx {
    #[inline(always)]
    unsafe fn load_config(&mut self, config: &TileConfig) {
        // SAFETY: the caller passes a valid configuration on an AMX CPU (`Amx::new`).
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) config, options(nostack, readonly)) }
    }

    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        const { assert!((T as usize) < TILES) };
        // SAFETY: only writes tile T, which the caller configured.
        unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) }
    }

    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        const { assert!((T as usize) < TILES) };
        // SAFETY: the caller guarantees that every configured row is readable.
        unsafe {
            std::arch::asm!("tileloadd tmm{t}, [{base} + {stride}*1]", t = const T,
                base = in(reg) base, stride = in(reg) stride, options(nostack, readonly));
        }
    }

    #[inline(always)]
    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self) {
        const { assert!((C as usize) < TILES && (A as usize) < TILES && (B as usize) < TILES) };
        const {
            assert!(
                C != A && C != B && A != B,
                "tdpbusd needs three distinct tiles"
            )
        };
        // SAFETY: registers only; the caller guarantees configured tiles of matching shapes.
        unsafe {
            std::arch::asm!("tdpbusd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A,
                b = const B, options(nostack, nomem));
        }
    }

    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        const { assert!((T as usize) < TILES) };
        // SAFETY: the caller guarantees that every configured row is writable.
        unsafe {
            std::arch::asm!("tilestored [{base} + {stride}*1], tmm{t}", t = const T,
                base = in(reg) base, stride = in(reg) stride, options(nostack));
        }
    }

    #[inline(always)]
    unsafe fn release(&mut self) {
        // SAFETY: AMX is usable (`Amx::new`); only resets the tile state.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn requant_store(&self, acc: &[i32; 16], t: &Tile, row: usize, col: usize, n: usize) {
        // SAFETY: the caller guarantees the multipliers and the `n` output elements (and
        // AVX-512, which `Amx::new` requires); `acc` is 64 readable bytes.
        unsafe {
            let acc = std::arch::x86_64::_mm512_loadu_si512(acc.as_ptr().cast());
            super::avx512vnni::requant_store(acc, t, row, col, n);
        }
    }
}

/// Whether the CPU has AMX-TILE and AMX-INT8, the OS enabled the tile state, and Linux granted
/// this process tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn usable() -> bool {
    use std::arch::asm;
    use std::arch::x86_64::{__cpuid, __cpuid_count};
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

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call only updates this process's permitted XSAVE
    // features; `syscall` clobbers rcx and r11, declared below.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}
