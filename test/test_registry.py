"""The shared name registry behind architectures, policies and energy meters."""
import doctest

import pytest

from delen_ros.core import registry
from delen_ros.core.architectures import get_architecture
from delen_ros.core.energy import make_meter, register_meter
from delen_ros.core.policies import get_policy, register_policy
from delen_ros.core.registry import Registry


def test_doctests():
    assert doctest.testmod(registry).failed == 0


@pytest.mark.parametrize('name', ['', None, 3])
def test_bad_names_raise(name):
    with pytest.raises(ValueError, match='non-empty string'):
        Registry('thing').add(name, 1)


def test_duplicate_and_reserved_names_raise_listing_the_known():
    r = Registry('thing', reserved=('auto',))
    r.add('a', 1)
    with pytest.raises(ValueError, match=r"'a' is already registered \(known: \['a'\]\)"):
        r.add('a', 2)
    with pytest.raises(ValueError, match='auto'):
        r.add('auto', 3)
    assert r.get('a') == 1 and 'a' in r and list(r) == ['a']


@pytest.mark.parametrize('lookup, kind', [
    (get_architecture, 'architecture'),
    (get_policy, 'policy'),
])
def test_users_report_unknown_names_with_the_known_ones(lookup, kind):
    with pytest.raises(KeyError, match=f'unknown {kind} .nope.; known: '):
        lookup('nope')


def test_duplicates_are_refused_by_every_user():
    with pytest.raises(ValueError, match='already registered'):
        register_policy('delen')(type('P', (), {}))
    with pytest.raises(ValueError, match='already registered'):
        register_meter('auto', lambda **_: None)
    with pytest.raises(ValueError, match='unknown energy meter'):
        make_meter('nope')
