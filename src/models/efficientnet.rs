//! EfficientNet-Lite0 (work in progress).
