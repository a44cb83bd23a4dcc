bb 0.1;
# A block called with a misspelt keyword parameter.
import "aux/layers.bb";

model net() {
    input x: f32[1, 3, 8, 8];
    stem = conv_bn_act(x, outs=8);
    output y = stem;
}
