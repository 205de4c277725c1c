r"""A fake ILSVRC2012 manual dir made of real photographs, for tests and the input benchmark.

It has the layout TFDS `imagenet2012` prepares from, so the real builder runs on it offline:

  ILSVRC2012_img_train.tar   a tar of per-class tars nXXXXXXXX.tar, each of nXXXXXXXX_<i>.JPEG
  ILSVRC2012_img_val.tar     a flat tar of ILSVRC2012_val_<8 digits>.JPEG

The images are JPEG crops, of random aspect ratio and size, of the colour photographs that ship in
scikit-image and matplotlib (see resizer_jax/data/demo.py). **The labels mean nothing**: a train
image's class is the real wnid of the tar it sits in, and a validation image's label is the one the
builder's bundled `validation_labels.txt` gives the k-th validation file of the real ImageNet,
whatever the photo shows. Use it to exercise the data path, never to measure accuracy.

  python -m resizer_jax.data.imagenet_fixture --manual_dir=/tmp/fake_imagenet/manual
  python -m resizer_jax.bench --workload=input --config=configs/imagenet.py:input=448 \
      --data_dir=/tmp/fake_imagenet --manual_dir=/tmp/fake_imagenet/manual   # Builds on first use.

The defaults (64 train images in 8 classes, 32 validation images, longer side 375-500 px, JPEG
quality 90) are close to ImageNet's typical 500x375 JPEGs, for `bench --workload=input`.
"""
import argparse
import io
import os
import tarfile

import numpy as np
from PIL import Image

from resizer_jax.data import demo

PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "chelsea",
          "coffee", "grace_hopper")
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"


def _tfds_lines(name: str) -> list[str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = tfds.core.tfds_path(os.path.join("datasets", "imagenet2012", name))
  return path.read_text().split()


def wnids() -> list[str]:
  """The 1000 class ids in label order, as the builder's `labels.txt` has them."""
  return _tfds_lines("labels.txt")


def validation_wnids(num: int) -> list[str]:
  """The labels the builder gives the first `num` validation files (in sorted name order)."""
  return _tfds_lines("validation_labels.txt")[:num]


def val_name(k: int) -> str:
  return f"ILSVRC2012_val_{k:08d}.JPEG"


def photo_jpegs(num: int, *, min_side: int, max_side: int, seed: int, quality: int = 90):
  """`num` JPEG-encoded random crops of the shipped photographs, aspect ratio 1/2..2."""
  rng = np.random.default_rng(seed)
  photos = [demo.load_photo(name) for name in PHOTOS]
  out = []
  for i in range(num):
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # width / height
    ch = int(min(h, w / aspect) * rng.uniform(0.5, 1.0))
    cw = max(1, min(w, round(ch * aspect)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(photo[top:top + ch, left:left + cw])
    long_side = int(rng.integers(min_side, max_side + 1))
    scale = long_side / max(ch, cw)
    crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))),
                       Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=quality)
    out.append(buf.getvalue())
  return out


def _add(tar: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_train_tar(path: str, files_by_wnid: dict[str, dict[str, bytes]]):
  """ILSVRC2012_img_train.tar: one inner nXXXXXXXX.tar per class, of its (file name, bytes)."""
  with tarfile.open(path, "w") as outer:
    for wnid, files in files_by_wnid.items():
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for name, data in files.items():
          _add(inner, name, data)
      _add(outer, f"{wnid}.tar", buf.getvalue())


def write_val_tar(path: str, files: dict[str, bytes]):
  with tarfile.open(path, "w") as tar:
    for name, data in files.items():
      _add(tar, name, data)


def write_manual_dir(manual_dir: str, *, num_classes: int = 8, train_per_class: int = 8,
                     num_val: int = 32, min_side: int = 375, max_side: int = 500, seed: int = 0):
  """Writes both tars; returns (train {wnid: {name: bytes}}, val {name: bytes})."""
  os.makedirs(manual_dir, exist_ok=True)
  classes = wnids()[:num_classes]
  images = photo_jpegs(num_classes * train_per_class + num_val, min_side=min_side,
                       max_side=max_side, seed=seed)
  train = {wnid: {f"{wnid}_{i + 1}.JPEG": images.pop() for i in range(train_per_class)}
           for wnid in classes}
  val = {val_name(k + 1): images.pop() for k in range(num_val)}
  write_train_tar(os.path.join(manual_dir, TRAIN_TAR), train)
  write_val_tar(os.path.join(manual_dir, VAL_TAR), val)
  return train, val


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--manual_dir", required=True)
  p.add_argument("--num_classes", type=int, default=8)
  p.add_argument("--train_per_class", type=int, default=8)
  p.add_argument("--num_val", type=int, default=32)
  p.add_argument("--min_side", type=int, default=375)
  p.add_argument("--max_side", type=int, default=500)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  write_manual_dir(a.manual_dir, num_classes=a.num_classes, train_per_class=a.train_per_class,
                   num_val=a.num_val, min_side=a.min_side, max_side=a.max_side, seed=a.seed)


if __name__ == "__main__":
  main()
