//! Fashion-MNIST (work in progress).
