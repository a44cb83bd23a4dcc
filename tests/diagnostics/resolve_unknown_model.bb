# bbc-test: model=resnet_18
bb 0.1;
# `--model resnet_18` where the file spells it `resnet18`.
model resnet(width: int = 8) {
    input x: f32[1, 3, 8, 8];
    output y = conv2d(x, out=width, k=3, pad=1);
}

model resnet18 = resnet(width=16);
model resnet34 = resnet(width=32);
