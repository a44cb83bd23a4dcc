//! `bbc-runtime`: tensors and their IO.
