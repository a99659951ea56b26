"""mtd.fields: the named tuples of the records every command reads behave as
collections.namedtuple's do, where this project relies on it."""
import copy
import pickle
from collections import namedtuple

import pytest

from mtd import FlashType, Geometry
from mtd.fields import fields
from snapshot.store.format import Fleet

Point = fields("Point", "x y z", defaults=(0,))
Reference = namedtuple("Reference", "x y z", defaults=(0,))


@pytest.mark.parametrize("args, given", [((1, 2, 3), {}), ((1, 2), {}), ((1,), {"y": 2}),
                                         ((), {"z": 3, "y": 2, "x": 1})])
def test_construction_is_namedtuples(args, given):
    ours, theirs = Point(*args, **given), Reference(*args, **given)
    assert ours == theirs and hash(ours) == hash(theirs) and tuple(ours) == tuple(theirs)
    assert (ours.x, ours.y, ours.z) == (theirs.x, theirs.y, theirs.z)
    assert ours._asdict() == theirs._asdict()
    assert ours._replace(y=9) == theirs._replace(y=9)
    assert repr(ours) == repr(theirs).replace("Reference", "Point")


@pytest.mark.parametrize("args, given", [((), {}), ((1,), {}), ((1, 2, 3, 4), {}),
                                         ((1, 2), {"x": 1}), ((1, 2), {"w": 1})])
def test_what_namedtuple_refuses_is_refused(args, given):
    with pytest.raises(TypeError):
        Reference(*args, **given)
    with pytest.raises(TypeError):
        Point(*args, **given)


def test_a_field_that_does_not_exist_cannot_be_replaced():
    with pytest.raises(ValueError):
        Point(1, 2)._replace(w=1)


def test_the_records_copy_pickle_and_keep_their_methods():
    geometry = Geometry(FlashType.NAND, 1 << 20, 128 << 10, 2048, 64)
    assert geometry.blocks == 8 and geometry.is_nand
    for copied in (copy.copy(geometry), copy.deepcopy(geometry),
                   pickle.loads(pickle.dumps(geometry))):
        assert copied == geometry and type(copied) is Geometry
    assert Fleet(3).failing("0123456789abcdef").failed == ("0123456789abcdef",)
    with pytest.raises(AttributeError):
        geometry.size = 1
