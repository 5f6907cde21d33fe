//! The content checksums of a record: an xxh3-64 of the program's JSON and one of every tensor
//! (its name, type, shape and bytes), stored in the record's metadata as a JSON object from
//! name (`program` for the program) to 16 hex digits, and verified before anything is built
//! from the file.

use std::collections::BTreeMap;

use burn::tensor::DType;
use xxhash_rust::xxh3::Xxh3;

/// The key of the program's checksum.
const PROGRAM: &str = "program";

/// Checksums by name, as stored in a record.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Checksums(BTreeMap<String, String>);

impl Checksums {
    /// Adds the program's checksum.
    pub(super) fn add_program(&mut self, json: &str) {
        self.0.insert(PROGRAM.into(), hex(xxh3(&[json.as_bytes()])));
    }

    /// Adds the checksum of one tensor.
    pub(super) fn add_tensor(&mut self, name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) {
        self.0
            .insert(name.into(), tensor(name, dtype, shape, bytes));
    }

    /// The JSON stored in the metadata.
    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a map of strings serializes")
    }

    /// Reads the JSON stored in the metadata.
    pub(super) fn from_json(json: &str) -> Result<Self, String> {
        serde_json::from_str(json)
            .map(Checksums)
            .map_err(|e| format!("checksums: {e}"))
    }

    /// `Err` naming the program or tensor whose checksum differs from `stored`'s, or that one
    /// of the two has and the other lacks.
    pub(super) fn verify(&self, stored: &Checksums) -> Result<(), String> {
        for (name, sum) in &self.0 {
            let what = match name.as_str() {
                PROGRAM => "the program".to_string(),
                _ => format!("tensor `{name}`"),
            };
            match stored.0.get(name) {
                Some(s) if s == sum => {}
                Some(_) => {
                    return Err(format!(
                        "{what} does not match its checksum: the file was altered or damaged"
                    ));
                }
                None => return Err(format!("{what} has no checksum: it was added to the file")),
            }
        }
        match stored.0.keys().find(|k| !self.0.contains_key(*k)) {
            Some(name) => Err(format!(
                "tensor `{name}` is listed in the checksums but missing"
            )),
            None => Ok(()),
        }
    }
}

/// The checksum of a tensor's name, type, shape and bytes.
fn tensor(name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> String {
    let dims: Vec<u8> = shape
        .iter()
        .flat_map(|&d| (d as u64).to_le_bytes())
        .collect();
    let dtype = format!("{dtype:?}");
    hex(xxh3(&[
        name.as_bytes(),
        &[0],
        dtype.as_bytes(),
        &[0],
        &dims,
        bytes,
    ]))
}

fn xxh3(parts: &[&[u8]]) -> u64 {
    let mut hasher = Xxh3::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.digest()
}

fn hex(sum: u64) -> String {
    format!("{sum:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_a_tensor_and_the_program_is_covered() {
        let mut saved = Checksums::default();
        saved.add_program("{\"steps\":[]}");
        saved.add_tensor("a.weight", DType::I8, &[2, 3], &[1, 2, 3, 4, 5, 6]);
        let stored = Checksums::from_json(&saved.to_json()).unwrap();
        assert_eq!(stored, saved);
        saved.verify(&stored).unwrap();
        let changed = |f: &dyn Fn(&mut Checksums)| {
            let mut c = Checksums::default();
            f(&mut c);
            c.verify(&stored).unwrap_err()
        };
        let program = |c: &mut Checksums| c.add_program("{\"steps\":[]}");
        let weight = |c: &mut Checksums, dtype, shape: &[usize], bytes: &[u8]| {
            c.add_tensor("a.weight", dtype, shape, bytes)
        };
        let e = changed(&|c| {
            c.add_program("{\"steps\":[1]}");
            weight(c, DType::I8, &[2, 3], &[1, 2, 3, 4, 5, 6]);
        });
        assert!(e.contains("the program does not match"), "{e}");
        for (dtype, shape, bytes) in [
            (DType::U8, [2, 3], [1, 2, 3, 4, 5, 6]),
            (DType::I8, [3, 2], [1, 2, 3, 4, 5, 6]),
            (DType::I8, [2, 3], [1, 2, 3, 4, 5, 7]),
        ] {
            let e = changed(&|c| {
                program(c);
                weight(c, dtype, &shape, &bytes);
            });
            assert!(e.contains("tensor `a.weight` does not match"), "{e}");
        }
        let e = changed(&program);
        assert!(
            e.contains("`a.weight` is listed in the checksums but missing"),
            "{e}"
        );
        let e = changed(&|c| {
            program(c);
            weight(c, DType::I8, &[2, 3], &[1, 2, 3, 4, 5, 6]);
            c.add_tensor("b", DType::F32, &[1], &[0; 4]);
        });
        assert!(e.contains("tensor `b` has no checksum"), "{e}");
    }
}
