"""The one-line description of an exception."""
from demp_jax.errors import one_line


def test_one_line_names_the_type_and_the_first_line_only():
  assert one_line(ValueError('bad shape\n  details')) == 'ValueError: bad shape'
  assert one_line(KeyError()) == 'KeyError: '  # an empty message
  assert one_line(RuntimeError('x' * 50), limit=10) == 'RuntimeError: ' + 'x' * 10
