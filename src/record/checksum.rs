//! The content checksums of a record: an xxh3-64 of the program's JSON and one of every tensor
//! (its name, type, shape and bytes), stored in the record's metadata as 16 hex digits each,
//! the program's first and then the tensors' in name order (the order burnpack lists them), and
//! verified before anything is built from the file. (Names are not repeated: the metadata
//! counts in the size of small models' records.)

use burn::tensor::DType;
use xxhash_rust::xxh3::Xxh3;

/// Hex digits per checksum.
const DIGITS: usize = 16;

/// The checksums of a record's program and of its tensors (by name, in name order).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Checksums {
    program: Option<u64>,
    tensors: Vec<(String, u64)>,
}

/// Checksums as stored: the program's, then one per tensor in name order.
#[derive(Debug, PartialEq)]
pub(super) struct Stored(Vec<u64>);

impl Checksums {
    /// Adds the program's checksum.
    pub(super) fn add_program(&mut self, json: &str) {
        self.program = Some(xxh3(&[json.as_bytes()]));
    }

    /// Adds the checksum of one tensor.
    pub(super) fn add_tensor(&mut self, name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) {
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        let dtype = format!("{dtype:?}");
        let sum = xxh3(&[name.as_bytes(), &[0], dtype.as_bytes(), &[0], &dims, bytes]);
        self.tensors.push((name.into(), sum));
    }

    /// The text stored in the metadata (tensors sorted by name).
    pub(super) fn to_text(&self) -> String {
        let mut tensors: Vec<&(String, u64)> = self.tensors.iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let sums = self.program.into_iter().chain(tensors.iter().map(|t| t.1));
        sums.map(|s| format!("{s:0DIGITS$x}")).collect()
    }

    /// `Err` naming the program or the tensor whose checksum differs from `stored`'s, or saying
    /// that the file holds more or fewer tensors than its checksums cover. The tensors must
    /// have been added in name order.
    pub(super) fn verify(&self, stored: &Stored) -> Result<(), String> {
        let altered = |what: String| {
            Err(format!(
                "{what} does not match its checksum: the file was altered or damaged"
            ))
        };
        let ours = self
            .program
            .into_iter()
            .chain(self.tensors.iter().map(|t| t.1));
        if stored.0.len() != 1 + self.tensors.len() {
            return Err(format!(
                "the file holds {} tensors but its checksums cover {}: a tensor was added or \
                 removed",
                self.tensors.len(),
                stored.0.len().saturating_sub(1)
            ));
        }
        match ours.zip(&stored.0).position(|(a, b)| a != *b) {
            None => Ok(()),
            Some(0) => altered("the program".into()),
            Some(i) => altered(format!("tensor `{}`", self.tensors[i - 1].0)),
        }
    }
}

impl Stored {
    /// Reads the text stored in the metadata.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("checksums: not a list of {DIGITS}-digit hex numbers");
        if text.is_empty() || !text.len().is_multiple_of(DIGITS) || !text.is_ascii() {
            return Err(bad());
        }
        (0..text.len() / DIGITS)
            .map(|i| u64::from_str_radix(&text[i * DIGITS..][..DIGITS], 16).map_err(|_| bad()))
            .collect::<Result<_, _>>()
            .map(Stored)
    }
}

fn xxh3(parts: &[&[u8]]) -> u64 {
    let mut hasher = Xxh3::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(program: &str, tensors: &[(&str, DType, &[usize], &[u8])]) -> Checksums {
        let mut c = Checksums::default();
        c.add_program(program);
        for &(name, dtype, shape, bytes) in tensors {
            c.add_tensor(name, dtype, shape, bytes);
        }
        c
    }

    #[test]
    fn every_part_of_a_tensor_and_the_program_is_covered() {
        let weight: (&str, DType, &[usize], &[u8]) =
            ("a.weight", DType::I8, &[2, 3], &[1, 2, 3, 4, 5, 6]);
        let bias: (&str, DType, &[usize], &[u8]) = ("b.bias", DType::I32, &[1], &[0; 4]);
        let saved = sums("{\"steps\":[]}", &[weight, bias]);
        let stored = Stored::parse(&saved.to_text()).unwrap();
        assert_eq!(stored.0.len(), 3);
        saved.verify(&stored).unwrap();
        let e = sums("{\"steps\":[1]}", &[weight, bias])
            .verify(&stored)
            .unwrap_err();
        assert!(e.contains("the program does not match"), "{e}");
        for changed in [
            (
                "a.weight",
                DType::U8,
                &[2usize, 3][..],
                &[1u8, 2, 3, 4, 5, 6][..],
            ),
            ("a.weight", DType::I8, &[3, 2], &[1, 2, 3, 4, 5, 6]),
            ("a.weight", DType::I8, &[2, 3], &[1, 2, 3, 4, 5, 7]),
            ("a.weighs", DType::I8, &[2, 3], &[1, 2, 3, 4, 5, 6]),
        ] {
            let e = sums("{\"steps\":[]}", &[changed, bias])
                .verify(&stored)
                .unwrap_err();
            assert!(e.contains("does not match its checksum"), "{e}");
        }
        let e = sums("{\"steps\":[]}", &[weight])
            .verify(&stored)
            .unwrap_err();
        assert!(
            e.contains("holds 1 tensors but its checksums cover 2"),
            "{e}"
        );
        for text in ["", "0123", "zzzzzzzzzzzzzzzz", "é0123456789abcd"] {
            assert!(Stored::parse(text).is_err(), "{text}");
        }
    }
}
