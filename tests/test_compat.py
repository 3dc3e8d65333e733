"""open_clip imports and works offline with CPU torch beside a CUDA-built torchvision."""
import subprocess
import sys


def test_import_open_clip_in_a_fresh_process():
    # A fresh interpreter: the compat step must run before torchvision is first imported.
    code = (
        "from mmviz._compat import import_open_clip\n"
        "oc = import_open_clip()\n"
        "import torchvision.transforms\n"
        "tok = oc.get_tokenizer('ViT-B-32')(['a photo of a dog'])\n"
        "print(tuple(tok.shape), int(tok[0, 0]), 'ViT-B-32' in oc.list_models())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    # 77 context tokens; 49406 is CLIP's start-of-text token
    assert out.stdout.split() == ["(1,", "77)", "49406", "True"]


def test_compat_is_idempotent():
    from mmviz._compat import ensure_torchvision_ops, import_open_clip

    ensure_torchvision_ops()
    ensure_torchvision_ops()
    assert import_open_clip().__name__ == "open_clip"
