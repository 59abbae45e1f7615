"""Pools of names, values and words for the dialogue tasks, all generated or invented (no copyrighted
text), all printable ASCII.

Every name and value has a fixed vocabulary split, decided by a hash of the string itself: the same
string is always 'train' or always 'test', so test dialogues use names and values never seen in
training. Names split by their parts: a full name is 'test' only when first and last name both are.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Literal

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
TEST_FRACTION = 0.2


def split_of(item: str) -> Split:
    h = int.from_bytes(hashlib.blake2b(item.encode(), digest_size=4).digest(), "little")
    return "test" if h < TEST_FRACTION * 2**32 else "train"


def draw(rng: random.Random, make: Callable[[random.Random], str], split: Split, tries: int = 10_000) -> str:
    """A value from `make` that belongs to `split` (rejection sampling)."""
    for _ in range(tries):
        item = make(rng)
        if split_of(item) == split:
            return item
    raise RuntimeError(f"no {split!r} item after {tries} draws: the pool is too small to split")


def words(s: str) -> tuple[str, ...]:
    return tuple(s.split())


# --- names: ~1,800 first names x ~1,500 last names, built from parts -------------------------------
FIRST_STARTS = words(
    "Al Bel Cor Dar El Fen Gar Hal Is Jor Kal Lor Mar Nor Or Per Quin Ros Sel Tam Ul Val Wil Xan Yor "
    "Zel Ad Bri Cal Dor Em Fal Gil Har Iv Jes Kor Lis Mir Nel Ot Pav Ren Sab Tor"
)
FIRST_ENDS = words(
    "a an ia ina o on ric den ley ton wen ette is us ar el iel ena ora ius ander ith ine anne ik ro "
    "mond win bert da lo ra sa ny ta mir van dra ssa"
)
LAST_STARTS = words(
    "Ash Black Brook Clay Dun East Fair Gold Hart Iron Kings Lang Marsh North Oak Pen Quill Red Stone "
    "Thorn Under Vale West Wood Yar Bell Cro Dal Fern Gray Hol Kel Lind Mor Nash Ost Pry Rook Sand Tal "
    "Wren Birch Cald Dray Elm Frost Glen Hale Ives Kerr"
)
LAST_ENDS = words(
    "man ton ford wood field ley worth by well son berg stead ham more croft dale land wick shaw combe "
    "brook ridge ing er ard ell ick ow en ers"
)


def first_name(rng: random.Random) -> str:
    return rng.choice(FIRST_STARTS) + rng.choice(FIRST_ENDS)


def last_name(rng: random.Random) -> str:
    return rng.choice(LAST_STARTS) + rng.choice(LAST_ENDS)


def person(rng: random.Random, split: Split) -> str:
    """A full name whose first and last names are both in `split`."""
    return f"{draw(rng, first_name, split)} {draw(rng, last_name, split)}"


def name_parts(full_name: str) -> list[str]:
    return full_name.split()


# --- word pools --------------------------------------------------------------------------------------
COLOURS = words(
    "red blue green yellow purple orange teal turquoise maroon navy olive crimson amber lavender "
    "indigo magenta beige charcoal coral ivory mint peach plum rust saffron scarlet silver gold "
    "emerald cobalt ochre lilac sand slate"
)
ANIMALS = words(
    "otter heron badger falcon lynx marten osprey panda puffin raven salmon tapir walrus wombat "
    "beaver bison condor dingo egret ferret gecko ibis jackal koala lemur moose newt ocelot pelican "
    "quail robin stoat toucan viper weasel yak zebra"
)
FOODS = words(
    "lasagna sushi risotto paella ramen tacos dumplings curry goulash pancakes falafel gnocchi "
    "moussaka pierogi burritos couscous chowder omelette ravioli satay tagine pho bibimbap "
    "quesadillas shakshuka polenta gazpacho hummus kebabs pretzels"
)
DRINKS = tuple(
    f"{a} {b}"
    for a in words("iced hot oat decaf spiced double")
    for b in words("latte mocha chai espresso cocoa matcha americano cortado")
)
CITIES = words(
    "Lisbon Oslo Porto Lyon Krakow Bergen Tallinn Ghent Utrecht Bologna Seville Malmo Tampere "
    "Graz Brno Cork Leeds Bristol Halifax Quebec Denver Austin Tucson Boise Perth Hobart Nelson "
    "Osaka Sendai Busan Hanoi Cusco Quito Rosario Valparaiso Accra Dakar Tunis Izmir Tbilisi Riga "
    "Vilnius Ljubljana Split Zadar Trieste Verona Nantes Lille Bilbao Granada Aarhus Turku Galway"
)
ALLERGIES = words(
    "peanuts shellfish penicillin latex pollen gluten sesame soy walnuts almonds eggs mustard celery "
    "lupin kiwi strawberries dust-mites aspirin ibuprofen mango sulfites cinnamon"
)
HOBBIES = words(
    "pottery climbing chess birdwatching knitting woodworking fencing rowing gardening origami "
    "archery sailing juggling calligraphy beekeeping kayaking baking skating surfing stargazing "
    "quilting geocaching bouldering dancing cycling"
)
SPORTS = words(
    "tennis football cricket rugby hockey volleyball badminton squash handball baseball basketball "
    "golf netball lacrosse polo curling waterpolo softball croquet"
)
INSTRUMENTS = words(
    "cello violin piano trumpet clarinet oboe bassoon harp flute banjo ukulele mandolin accordion "
    "saxophone trombone tuba drums viola harmonica sitar"
)
LANGUAGES = words(
    "Portuguese Norwegian Polish Dutch Finnish Czech Greek Turkish Swahili Tagalog Hungarian Danish "
    "Romanian Welsh Basque Catalan Estonian Latvian Icelandic Maltese Korean Vietnamese"
)
SPICES = words(
    "cumin cardamom paprika turmeric nutmeg saffron sumac fennel coriander clove allspice "
    "fenugreek tarragon oregano thyme rosemary anise juniper"
)
WEEKDAYS = words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
MONTHS = words("January February March April May June July August September October November December")
ADJECTIVES = words(
    "silver quiet amber hidden copper northern velvet crimson hollow distant golden iron patient "
    "restless wandering frozen bright lucky silent swift gentle scarlet last little"
)
NOUNS = words(
    "harbor lantern orchard compass falcon meadow river garden beacon engine forest island bridge "
    "window mountain kettle signal tower voyage letter anchor ribbon"
)
STREETS = words("Elm Oak Mill Church Station Park Bridge Market Rose Cedar Willow Chapel Harbor Castle")
STREET_KINDS = words("Street Road Lane Avenue Close Way Drive Terrace")


# --- value generators ----------------------------------------------------------------------------------
def digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(10 ** (n - 1), 10**n - 1))


def code(rng: random.Random, n: int, alphabet: str = "ABCDEFGHJKLMNPRSTUVWXYZ23456789") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def letters(rng: random.Random, n: int) -> str:
    return code(rng, n, "ABCDEFGHJKLMNPRSTUVWXYZ")


def date(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"


def clock(rng: random.Random, hour: int | None = None) -> str:
    """A 12-hour time like '7:45 pm'; hour (0-23) fixes the hour."""
    h = rng.randrange(24) if hour is None else hour
    return f"{(h - 1) % 12 + 1}:{rng.randrange(0, 60, 5):02d} {'am' if h < 12 else 'pm'}"


def hms(rng: random.Random) -> str:
    return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"


def weekday_time(rng: random.Random) -> str:
    return f"{rng.choice(WEEKDAYS)} at {clock(rng)}"


def title(rng: random.Random) -> str:
    return f"The {rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS).title()}"


def band(rng: random.Random) -> str:
    return f"The {rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS).title()}s"


def codename(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES).title()} {rng.choice(ANIMALS).title()}"


def passphrase(rng: random.Random) -> str:
    return f"{rng.choice(NOUNS)}-{rng.choice(ANIMALS)}-{rng.randint(10, 99)}"


def address(rng: random.Random) -> str:
    return f"{rng.randint(1, 240)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}"


def username(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_STARTS).lower()}{rng.choice(LAST_ENDS)}{rng.randint(1, 99)}"


def hostname(rng: random.Random) -> str:
    role, region = rng.choice(("db", "web", "cache", "batch", "auth", "mail")), rng.choice(("eu", "us", "ap"))
    return f"{role}-{region}-{rng.randint(1, 40):02d}"


def ip_address(rng: random.Random) -> str:
    return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def pick(pool: tuple[str, ...]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(pool)


ONSETS = words("b br d dr f g gl k kr l m n p pl r s st t tr v z")
NUCLEI = words("a e i o u ai ou")
CODAS = ("", "", "n", "l", "r", "s", "th", "x")


def invented_word(rng: random.Random) -> str:
    """A pronounceable invented word of 2-3 syllables ("drelvin", "zoupa"): a value no pool holds,
    some 10^5 of them, so a model can only reproduce it by copying."""
    syllables = rng.randint(2, 3)
    return "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) for _ in range(syllables)) + rng.choice(CODAS)
