"""The Barlow Twins step of benchmarks/compare_torch.py in plain PyTorch: torchvision's ResNet topology (zero-init
residual BatchNorm, as fetalssl_jax) or timm's ViT, the reference's projector and loss, and its LARS. Imported only
by the torch worker subprocess."""

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        nn.init.zeros_(self.bn2.weight)  # zero-init residual, as fetalssl_jax
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3 ("v1.5")
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        nn.init.zeros_(self.bn3.weight)
        self.downsample = _shortcut(cin, width * 4, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.downsample(x))


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    def __init__(self, block, layers, width=64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], width
        for i, n in enumerate(layers):
            for j in range(n):
                blocks.append(block(cin, width * 2**i, 2 if (i > 0 and j == 0) else 1))
                cin = width * 2**i * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class BarlowTwins(nn.Module):
    def __init__(self, arch, sizes, patch_size=16, image_size=224, lambd=0.0051):
        super().__init__()
        if arch.startswith("vit"):  # timm's ViT, its class token after the final norm (as fetalssl_jax reads it)
            import timm

            name = f"{arch}_patch{patch_size}_{image_size}"
            self.backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="token")
        else:
            self.backbone = ResNet(*ARCHS[arch])
        dims = [self.backbone.num_features, *sizes]
        head = []
        for i in range(len(dims) - 2):
            head += [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
        head.append(nn.Linear(dims[-2], dims[-1], bias=False))
        self.projector = nn.Sequential(*head)
        self.bn = nn.BatchNorm1d(dims[-1], affine=False)
        self.lambd = lambd

    def forward(self, y1, y2):
        z1 = self.bn(self.projector(self.backbone(y1)))
        z2 = self.bn(self.projector(self.backbone(y2)))
        c = z1.T @ z2 / z1.shape[0]
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diag + self.lambd * off_diag


class LARS(torch.optim.Optimizer):
    """The Barlow Twins reference's LARS: weight decay and trust ratio on weights (ndim > 1), then momentum."""

    def __init__(self, params, lr, weight_decay=1e-6, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one),
                        one,
                    )
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
