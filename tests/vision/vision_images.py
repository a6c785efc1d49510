"""Real photos the detector tests share (all ship inside scikit-image: no download)."""

import numpy as np
import skimage.data


def astronaut():
  """(512, 512, 3) uint8 RGB: one frontal face (Eileen Collins)."""
  return skimage.data.astronaut()


def camera():
  """(512, 512, 3) uint8: the cameraman, a grey photo repeated over three channels."""
  return np.repeat(skimage.data.camera()[..., None], 3, axis=-1)


def side_by_side():
  """(512, 1024, 3) uint8: the astronaut beside her mirror image, two faces."""
  a = astronaut()
  return np.concatenate([a, a[:, ::-1]], axis=1)


def coffee():
  """(400, 600, 3) uint8: a cup of coffee, no face (and H, W not multiples of 32)."""
  return skimage.data.coffee()


def astronaut_small():
  """(200, 200, 3) uint8: the astronaut downscaled, a smaller face and padding needed."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.fromarray(astronaut()).resize((200, 200), Image.BILINEAR))


# Name -> photo; the fixture and the parity tests iterate over these.
IMAGES = {
    "astronaut": astronaut,
    "side_by_side": side_by_side,
    "camera": camera,
    "coffee": coffee,
    "astronaut_small": astronaut_small,
}
