"""Network factories: tiny 2D and 3D configs, shapes, gradient checkpointing equivalence, errors."""
import pytest
import torch

from medkit import nets


@pytest.mark.parametrize("dims, size", [(2, (16, 16)), (3, (8, 8, 8))])
def test_vae_shapes(dims, size):
    vae = nets.make_vae(dims, in_channels=1, latent_channels=4, channels=(8, 8, 8), norm_num_groups=4)
    x = torch.randn(2, 1, *size)
    recon, mu, sigma = vae(x)
    assert recon.shape == x.shape
    assert mu.shape == (2, 4, *(s // 4 for s in size))  # 3 levels -> 4x downsampling
    assert (sigma > 0).all()


@pytest.mark.parametrize("dims, size", [(2, (8, 8)), (3, (8, 8, 8))])
def test_unet_shapes(dims, size):
    unet = nets.make_unet(dims, in_channels=4, channels=(8, 8, 16), num_res_blocks=1, num_head_channels=8,
                          norm_num_groups=4)
    x = torch.randn(2, 4, *size)
    assert unet(x, torch.tensor([0, 999])).shape == x.shape


def test_unet_gradient_checkpointing_is_exact():
    torch.manual_seed(0)
    a = nets.make_unet(2, in_channels=2, channels=(8, 16), num_res_blocks=1, num_head_channels=8, norm_num_groups=4)
    b = nets.make_unet(2, in_channels=2, channels=(8, 16), num_res_blocks=1, num_head_channels=8, norm_num_groups=4)
    b.load_state_dict(a.state_dict())
    assert nets.checkpoint_blocks(b) == len(b.down_blocks) + 1 + len(b.up_blocks)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3, 700])
    ya, yb = a(x, t), b(x, t)
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.square().mean().backward()
    yb.square().mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_vae_gradient_checkpointing_is_exact():
    torch.manual_seed(0)
    a = nets.make_vae(2, channels=(8, 8), norm_num_groups=4)
    b = nets.make_vae(2, channels=(8, 8), norm_num_groups=4, gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    assert b.use_checkpoint and not a.use_checkpoint
    x = torch.randn(1, 1, 8, 8)
    # compare decode(mu): the sampled z differs between calls
    ya, yb = a.decode(a.encode(x)[0]), b.decode(b.encode(x)[0])
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.mean().backward()
    yb.mean().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is not None:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    unet = nets.make_unet(2, in_channels=1, channels=(8, 8), num_res_blocks=1, num_head_channels=8,
                          norm_num_groups=4, attention_levels=(False, False))
    plain_sd = {k: v.clone() for k, v in unet.state_dict().items()}
    # MONAI zero-initialises conv2 and the output conv; give them weights so dropout has an effect
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    unet.eval()
    ref = unet(x, t)
    n_blocks = sum(type(m).__name__ == "DiffusionUNetResnetBlock" for m in unet.modules())
    assert nets.set_resblock_dropout(unet, 0.5) == n_blocks > 0
    assert set(unet.state_dict()) == set(plain_sd)  # no new keys: checkpoints stay compatible
    assert torch.equal(unet(x, t), ref)              # eval: no dropout
    unet.train()
    assert not torch.allclose(unet(x, t), ref)       # train: dropout changes the output
    with pytest.raises(ValueError, match="dropout=1.5"):
        nets.set_resblock_dropout(unet, 1.5)


def test_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"channels \(8, 12\).*norm_num_groups=8"):
        nets.make_vae(2, channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="attention_levels has 1 entries but channels has 2"):
        nets.make_unet(2, channels=(8, 8), attention_levels=(True,), norm_num_groups=4)
    with pytest.raises(TypeError, match="MONAI DiffusionModelUNet"):
        nets.checkpoint_blocks(torch.nn.Linear(2, 2))
