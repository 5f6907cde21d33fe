//! The record fuzzer's smoke run (the long run is `cargo run --release --example fuzz_records
//! -- --cases 1000000`): mutated records are refused with an error, or load with checksums
//! that matched and give the original's outputs, or (edited and sealed again) pass every
//! check and run; none panics.

mod fuzzing;

use burn::tensor::Device;
use burn_quantize::quantized::QuantizedModel;

#[test]
fn mutated_records_are_refused_or_load_intact_and_never_panic() {
    fuzzing::count_panics();
    let device = Device::flex();
    let seeds = fuzzing::seeds(&device);
    for seed in &seeds {
        let model = QuantizedModel::from_bytes(&seed.bytes, &device).unwrap();
        let y = model.try_forward::<4, 2>(seed.input.clone()).unwrap();
        assert_eq!(y.into_data(), seed.output);
    }
    let cases = 2400;
    let out = fuzzing::run(&seeds, 0x5eed, 0..cases, &device, &mut |_, _| {});
    println!("fuzz: {}", out.line());
    assert_eq!(out.cases, cases);
    assert_eq!(out.panics, 0, "{}", out.line());
    assert_eq!(out.altered_accepted, 0, "{}", out.line());
    // Both outcomes happen: most mutations are refused, some sealed edits load.
    assert!(out.errors > cases / 2, "{}", out.line());
    assert!(out.loaded_ok > cases / 50, "{}", out.line());
}
