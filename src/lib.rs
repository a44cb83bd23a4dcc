//! `bbc`: the command-line compiler and its embedding facade.
