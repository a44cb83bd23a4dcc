bb 0.1;
# Helper for syntax_error_in_import: a helper file with a syntax error (missing `)`).
block unit(x: tensor[B, C, H, W] -> tensor {
    return relu(x);
}
