//! ImageNet-style image folders and preprocessing (work in progress).
