"""ImageNet decoding and crops on synthetic JPEGs, a TF-less prepared
``imagenet2012`` tfds directory, and ``tfds.testing.mock_data``."""
import io

import numpy as np
import pytest

PIL = pytest.importorskip('PIL')
from PIL import Image  # noqa: E402

from data_formats import (jpeg_bytes, jpeg_records,  # noqa: E402
                          prepare_fake_imagenet, smooth_image)
from demp_jax.data import (NORMALIZATION, held_batches,  # noqa: E402
                           load_dataset, train_batches)
from demp_jax.data import imagenet  # noqa: E402


def _full_resize(jpg, size_wh):
  img = Image.open(io.BytesIO(jpg)).convert('RGB')
  return np.asarray(img.resize(size_wh, Image.Resampling.BILINEAR))


def _close(a, b, max_diff=1):
  d = np.abs(a.astype(int) - b.astype(int))
  assert d.max() <= max_diff, d.max()


def test_reference_params_cover_both_scales_and_all_offsets():
  rs, tops, flips = [], [], []
  for i in range(400):
    r, top, left, flip = imagenet.reference_train_params(
        np.random.default_rng(i))
    assert r in (256, 480) and 0 <= top <= r - 224 and 0 <= left <= r - 224
    rs.append(r)
    tops.append(top / (r - 224))
    flips.append(flip)
  assert 0.4 < np.mean(np.array(rs) == 480) < 0.6
  assert 0.4 < np.mean(flips) < 0.6
  assert min(tops) < 0.05 and max(tops) > 0.95
  with pytest.raises(ValueError, match='smaller than the crop'):
    imagenet.reference_train_params(np.random.default_rng(0), 224, (200,))


@pytest.mark.parametrize('seed', range(6))
def test_reference_train_is_resize_then_crop_then_flip(seed):
  """Equals: resize the whole image to R x R, crop 224 at (top, left),
  flip; the draws are those of reference_train_params."""
  jpg = jpeg_bytes(smooth_image(300 + 7 * seed, 410 - 9 * seed, seed))
  r, top, left, flip = imagenet.reference_train_params(
      np.random.default_rng(seed))
  want = _full_resize(jpg, (r, r))[top:top + 224, left:left + 224]
  if flip:
    want = want[:, ::-1]
  got = imagenet.reference_train(jpg, np.random.default_rng(seed),
                                 draft=False)
  assert got.shape == (224, 224, 3) and got.dtype == np.uint8
  _close(got, want)


def test_reference_eval_is_resize_256_central_224():
  jpg = jpeg_bytes(smooth_image(333, 500, 1))
  want = _full_resize(jpg, (256, 256))[16:240, 16:240]
  _close(imagenet.reference_eval(jpg, draft=False), want)
  # the draft (reduced-size JPEG decode) path stays close on a big image
  big = jpeg_bytes(smooth_image(1100, 1500, 2))
  a = imagenet.reference_eval(big, draft=False).astype(int)
  b = imagenet.reference_eval(big, draft=True).astype(int)
  assert np.mean(np.abs(a - b)) < 3.0
  assert Image.open(io.BytesIO(big)).size == (1500, 1100)
  assert imagenet.open_image(big, (256, 256)).size[0] < 1500  # drafted


def test_inception_eval_keeps_the_aspect():
  jpg = jpeg_bytes(smooth_image(300, 450, 3))  # short side 300 -> 256
  full = _full_resize(jpg, (384, 256))  # (w, h)
  want = full[16:240, 80:304]
  _close(imagenet.inception_eval(jpg, draft=False), want, max_diff=2)


def test_inception_crop_boxes():
  for i in range(200):
    rng = np.random.default_rng(i)
    x0, y0, x1, y1 = imagenet.inception_crop_box(rng, 500, 300)
    assert 0 <= x0 < x1 <= 500 + 1e-6 and 0 <= y0 < y1 <= 300 + 1e-6
    w, h = x1 - x0, y1 - y0
    assert 0.08 * 150000 * 0.999 <= w * h <= 150000 * 1.001
    assert 3 / 4 - 1e-6 <= w / h <= 4 / 3 + 1e-6
  out = imagenet.inception_train(jpeg_bytes(smooth_image(90, 70, 0)),
                                 np.random.default_rng(0), 64)
  assert out.shape == (64, 64, 3)


def test_grey_cmyk_png_and_arrays_become_rgb():
  img = smooth_image(80, 60, 4)
  grey = jpeg_bytes(img, mode='L')
  cmyk = jpeg_bytes(img, mode='CMYK')
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='PNG')
  for x in (grey, cmyk, buf.getvalue(), img, img[..., :1]):
    out = imagenet.reference_eval(x, image_size=32, resize_size=40)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def _source(records, train, **kw):
  kw = {'image_size': 32, 'resize_sizes': (36, 48), 'eval_resize': 36,
        'num_threads': 1, **kw}
  return imagenet.ImageNetSource(records, train, **kw)


def test_source_randomness_is_per_step_and_index():
  recs = jpeg_records(12, seed=1)
  src = _source(recs, True, seed=7)
  idx = np.array([0, 3, 5, 8])
  a, la = src.get_at_step(idx, 3)
  b, _ = src.get_at_step(idx, 3)
  c, _ = src.get_at_step(idx, 4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert la.tolist() == [recs[i]['label'] for i in idx]
  assert a.shape == (4, 32, 32, 3) and src.example_shape == (32, 32, 3)
  # the same example at the same step, whatever batch it is read in
  d, _ = src.get_at_step(np.array([5]), 3)
  np.testing.assert_array_equal(d[0], a[2])
  # examples of one batch get their own crops (one image, eight indices)
  same = _source([recs[0]] * 8, True, seed=7)
  crops = same.get_at_step(np.arange(8), 0)[0].reshape(8, -1)
  assert len({c.tobytes() for c in crops}) >= 6
  # threads change nothing
  threaded = _source(recs, True, seed=7, num_threads=4)
  np.testing.assert_array_equal(threaded.get_at_step(idx, 3)[0], a)
  threaded.close()
  # another seed, other crops; eval is deterministic and seed-free
  assert not np.array_equal(_source(recs, True, seed=8).get_at_step(
      idx, 3)[0], a)
  e1 = _source(recs, False, seed=1).get(idx)[0]
  e2 = _source(recs, False, seed=2).get(idx)[0]
  np.testing.assert_array_equal(e1, e2)
  np.testing.assert_array_equal(src.eval_view().get(idx)[0], e1)
  # bare get() advances a call counter
  g1, g2 = src.get(idx)[0], src.get(idx)[0]
  np.testing.assert_array_equal(g1, src.get_at_step(idx, 0)[0])
  assert not np.array_equal(g1, g2)


@pytest.mark.parametrize('count', [2, 4])
def test_hosts_decode_their_slices_of_the_same_global_batch(count):
  src = _source(jpeg_records(24, seed=2), True, seed=0, num_threads=2)
  full = train_batches(src, 8, seed=5, start_step=2)
  parts = [train_batches(src, 8, seed=5, start_step=2, process_index=p,
                         process_count=count) for p in range(count)]
  for _ in range(3):
    x, y = next(full)
    xs, ys = zip(*(next(p) for p in parts))
    assert xs[0].shape == (8 // count, 32, 32, 3)
    np.testing.assert_array_equal(np.concatenate(xs), x)
    np.testing.assert_array_equal(np.concatenate(ys), y)
  # resuming at step 3 gives batch 3 with the same crops
  resumed = next(train_batches(src, 8, seed=5, start_step=4))
  np.testing.assert_array_equal(resumed[0], x)


def test_bad_settings_name_the_key():
  with pytest.raises(ValueError, match='config.dataset.crop'):
    imagenet.ImageNetSource([], True, crop='center')
  with pytest.raises(ValueError, match='resize_sizes'):
    imagenet.ImageNetSource([], True, image_size=224, resize_sizes=(200,))
  with pytest.raises(ValueError, match='eval_resize'):
    imagenet.ImageNetSource([], True, image_size=224, eval_resize=100)


def test_prepared_tfds_dir_without_tensorflow(tmp_path):
  """A real array_record ``imagenet2012`` data_dir (written TF-less with
  the real features) read through load_dataset: JPEG bytes are decoded by
  our crops, 'test' is the 'validation' split, nothing is downloaded."""
  train = jpeg_records(10, seed=3)
  val = jpeg_records(6, seed=4)
  prepare_fake_imagenet(str(tmp_path), train, val)
  splits = load_dataset({
      'name': 'imagenet2012', 'data_dir': str(tmp_path), 'image_size': 32,
      'resize_sizes': (36, 48), 'eval_resize': 36, 'num_threads': 2,
      'seed': 1})
  assert isinstance(splits.train.records[0]['image'], bytes)  # raw JPEGs
  assert (len(splits.train), len(splits.test)) == (10, 6)
  assert splits.num_classes == 1000 and splits.augment is None
  assert splits.mean == NORMALIZATION['imagenet2012'][0]
  assert splits.train_eval is not None and not splits.train_eval.train
  # tfds shuffles records on writing: match them by file name
  by_name = {f'n{i:08d}.JPEG': r for i, r in enumerate(val)}
  recs = [splits.test.records[i] for i in range(6)]
  x, y = splits.test.get(np.arange(6))
  for j, r in enumerate(recs):
    name = r['file_name']
    name = name.decode() if isinstance(name, bytes) else str(name)
    want = imagenet.reference_eval(by_name[name]['image'], 32, 36)
    np.testing.assert_array_equal(x[j], want)
    assert y[j] == by_name[name]['label']
  hx, hy = held_batches(splits.train_eval, 2, 4, seed=0)
  assert hx.shape == (2, 4, 32, 32, 3) and hy.shape == (2, 4)
  tx, _ = next(train_batches(splits.train, 4, seed=0))
  assert tx.shape == (4, 32, 32, 3)


def test_mock_data_records_are_arrays():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    splits = load_dataset({'name': 'imagenet2012', 'image_size': 24,
                           'resize_sizes': (28, 40), 'eval_resize': 28,
                           'train_subset': 8, 'holdout': 2})
    assert (len(splits.train), len(splits.holdout)) == (6, 2)
    x, y = next(train_batches(splits.train, 3, seed=0))
    assert x.shape == (3, 24, 24, 3) and y.max() < 1000
    hx, _ = held_batches(splits.holdout, 1, 2, seed=0)
    assert hx.shape == (1, 2, 24, 24, 3)
    ex, _ = splits.test.get(np.arange(4))
    assert ex.shape == (4, 24, 24, 3)
