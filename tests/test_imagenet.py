"""ImageNet class names shipped with the project."""

import numpy as np
import pytest

from pipeline.models import imagenet


def test_known_names_and_ranges():
    assert len(imagenet.CLASSES) == 1000
    assert imagenet.CLASSES[0] == "tench"
    assert imagenet.CLASSES[281] == "tabby"
    assert imagenet.CLASSES[285] == "Egyptian cat"
    assert imagenet.CLASSES[340] == "zebra"
    assert imagenet.CLASSES[999] == "toilet tissue"
    assert [imagenet.CLASSES[i] for i in imagenet.CAT_IDS] == [
        "tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert imagenet.CLASSES[imagenet.DOG_IDS[0]] == "Chihuahua"
    assert imagenet.CLASSES[imagenet.DOG_IDS[-1]] == "Mexican hairless"
    assert len(imagenet.DOG_IDS) == 118
    assert imagenet.WNIDS[281] == "n02123045"


@pytest.mark.parametrize("query,want", [
    (281, 281), (np.int64(340), 340), ("285", 285), ("Egyptian cat", 285), ("tabby", 281),
    ("Tabby Cat", 281), ("  zebra ", 340), ("ZEBRA", 340), ("Siamese", 284), ("crane", 517), ("crane bird", 134), ("Crane (bird)", 134), ("maillot", 638),
    ("gray fox", 280),
])
def test_lookup(query, want):
    assert imagenet.lookup(query) == want


def test_lookup_errors():
    with pytest.raises(imagenet.ImageNetClassError, match="out of range"):
        imagenet.lookup(1000)
    with pytest.raises(imagenet.ImageNetClassError, match="'zebras'.*near matches.*'zebra' -> 340"):
        imagenet.lookup("zebras")
    with pytest.raises(imagenet.ImageNetClassError, match="ambiguous.*638.*639"):
        imagenet.lookup("MAILLOT")  # exact "maillot" is 638; case-insensitively also a synonym of 639
    with pytest.raises(imagenet.ImageNetClassError, match="not a float"):
        imagenet.lookup(3.5)
    with pytest.raises(imagenet.ImageNetClassError):
        imagenet.lookup(True)
