//! The small residual CNN for Fashion-MNIST (work in progress).
