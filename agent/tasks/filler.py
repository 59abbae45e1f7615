"""Filler for the memory dialogue: small talk and fed observations (logs, weather reports, recipes,
tool outputs, meeting notes, timetables, news digests), built from templates and pools.

Filler never states a fact of facts.py, so the only answer to a question is its statement.
Generators take (rng, split); chat ones return complete turns, documents the body of an observation.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from . import pools as P
from .base import ASSISTANT, OBSERVATION, USER, turn

Filler = Callable[[random.Random, P.Split], str]

CONDITIONS = P.words("sunny cloudy overcast rainy windy foggy drizzly stormy clear humid snowy")
ACTIVITIES = tuple(
    "a run, a long walk, the market, a concert, a museum, the dentist, a hike, the gym".split(", ")
)
TOPICS = P.words("budget roadmap hiring launch migration onboarding pricing security offsite backlog")
SERVICES = P.words("api auth billing cache scheduler gateway search worker ingest mailer")
LEVELS = ("INFO",) * 6 + ("DEBUG",) * 3 + ("WARN", "ERROR")
INGREDIENTS = P.words(
    "onion garlic carrot potato tomato lentils rice flour butter spinach mushrooms leek pepper "
    "chickpeas lemon ginger beans courgette cabbage parsley yoghurt cheese honey"
)
UNITS = {"g": (25, 500, 25), "ml": (50, 750, 50), "tbsp": (1, 5, 1), "tsp": (1, 4, 1), "cups": (1, 4, 1)}
STEPS = (
    "Chop the {i} finely.",
    "Fry the {i} until soft.",
    "Add the {i} and stir well.",
    "Simmer for {n} minutes.",
    "Season to taste.",
    "Bake at {t} C for {n} minutes.",
    "Whisk the {i} into the pan.",
    "Let it rest for {n} minutes before serving.",
)
SMALL_TALK = (
    (
        "How's the weather looking in {city} today?",
        "I don't have live data, but {city} is usually {cond} this time of year.",
    ),
    ("I just got back from {activity}.", "Welcome back! How was it?"),
    (
        "Any idea what I should cook tonight?",
        "How about {food}? It's quick and you can use whatever is in the fridge.",
    ),
    (
        "I'm thinking about taking up {hobby}.",
        "That's a great idea. Starting with a short class is a good way to see if you enjoy it.",
    ),
    (
        "Did you catch the {sport} match last night?",
        "I didn't watch it, but I can help you look up the result.",
    ),
    ("I'm so tired today.", "Sorry to hear that. Maybe a short walk or an early night would help."),
    (
        "Can you recommend a {colour} paint for a small room?",
        "{Colour} can work well in small rooms if the walls get good light.",
    ),
    (
        "What's a good name for a {animal} in a story?",
        "How about {name}? It sounds friendly and is easy to remember.",
    ),
    (
        "I need to get better at {instrument}.",
        "Practising a little every day usually beats one long session a week.",
    ),
    ("Remind me to stretch later.", "Sure, take a break whenever you feel stiff."),
    ("What's the capital of nowhere?", "That one has no answer, but I like the question."),
    ("Thanks for earlier!", "You're welcome, happy to help."),
    (
        "Is {food} hard to make at home?",
        "Not really. Most recipes need an hour or so and a few basic ingredients.",
    ),
    (
        "I might visit {city} next spring.",
        "Spring is a nice time to go. Booking early usually helps with prices.",
    ),
    ("My neighbour started learning the {instrument}.", "Hopefully they practise at reasonable hours!"),
    ("Should I take an umbrella today?", "If the forecast says {cond}, it can't hurt to bring one."),
    (
        "I keep forgetting to drink water.",
        "A bottle on your desk and a reminder every couple of hours can help.",
    ),
    (
        "Tell me something about the {animal}.",
        "The {animal} is well adapted to its habitat, and many people find it fascinating to watch.",
    ),
    (
        "I want to repaint the kitchen {colour}.",
        "{Colour} could look great, especially with light wooden surfaces.",
    ),
    ("What's a quick breakfast idea?", "Yoghurt with fruit and oats takes two minutes and keeps you full."),
    ("I finally finished that puzzle.", "Congratulations! How many pieces was it?"),
    (
        "Do you think {sport} is hard to learn?",
        "The basics come quickly; getting good takes regular practice.",
    ),
    ("It's been a long week.", "It sounds like it. I hope you get some rest this weekend."),
    (
        "I'm looking for a weekend activity.",
        "How about {hobby}? Many places offer beginner sessions on weekends.",
    ),
    ("My friend {name} says hi.", "Hi to {name} too!"),
    (
        "Can you help me write a short thank-you note?",
        "Of course: 'Thank you so much for your help this week, it made a real difference.'",
    ),
)
OBS_COMMENTS = (
    "Thanks, I've read that.",
    "Got it.",
    "Okay, noted.",
    "I see.",
    "Understood, thanks for the update.",
)


def _sub(template: str, rng: random.Random, split: P.Split) -> str:
    colour = rng.choice(P.COLOURS)
    return template.format(
        city=rng.choice(P.CITIES),
        cond=rng.choice(CONDITIONS),
        activity=rng.choice(ACTIVITIES),
        food=rng.choice(P.FOODS),
        hobby=rng.choice(P.HOBBIES),
        sport=rng.choice(P.SPORTS),
        colour=colour,
        Colour=colour.title(),
        animal=rng.choice(P.ANIMALS),
        name=P.draw(rng, P.first_name, split),
        instrument=rng.choice(P.INSTRUMENTS),
    )


def small_talk(rng: random.Random, split: P.Split) -> str:
    user, reply = rng.choice(SMALL_TALK)
    return turn(USER, _sub(user, rng, split)) + turn(ASSISTANT, _sub(reply, rng, split))


def arithmetic(rng: random.Random, split: P.Split) -> str:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    word = rng.choice(("times", "plus", "minus"))
    result = {"times": a * b, "plus": a + b, "minus": a - b}[word]
    return turn(USER, f"What's {a} {word} {b}?") + turn(ASSISTANT, f"{a} {word} {b} is {result}.")


def conversion(rng: random.Random, split: P.Split) -> str:
    n = rng.randint(2, 500)
    unit, other, factor = rng.choice(
        (("miles", "km", 1.609), ("kg", "pounds", 2.205), ("litres", "pints", 1.76))
    )
    return turn(USER, f"How many {other} is {n} {unit}?") + turn(
        ASSISTANT, f"{n} {unit} is about {n * factor:.1f} {other}."
    )


def plan(rng: random.Random, split: P.Split) -> str:
    day, items = rng.choice(P.WEEKDAYS), rng.sample(P.HOBBIES + P.FOODS, rng.randint(2, 5))
    hours = sorted(rng.sample(range(8, 21), len(items)))
    lines = "\n".join(
        f"{i + 1}. {x.capitalize()} around {P.clock(rng, h)}" for i, (x, h) in enumerate(zip(items, hours))
    )
    return turn(USER, f"Help me plan {day}: I want to fit in {', '.join(items)}.") + turn(
        ASSISTANT, f"Here's a simple plan for {day}:\n{lines}\nLeave some slack between them."
    )


def tiny(rng: random.Random, split: P.Split) -> str:
    return turn(USER, rng.choice(("ok", "thanks", "hm", "cool", "right"))) + turn(
        ASSISTANT, rng.choice(("Sure.", "Okay.", "Anytime.", "Yes."))
    )


def stamp(rng: random.Random) -> str:
    return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def weather(rng: random.Random, split: P.Split) -> str:
    rows = "\n".join(
        f"  {part}: {rng.choice(CONDITIONS)}, {rng.randint(-5, 32)} C"
        for part in ("Morning", "Afternoon", "Evening")[: rng.randint(1, 3)]
    )
    return (
        f"Weather for {rng.choice(P.CITIES)}, {stamp(rng)}\n{rows}\n"
        f"  Wind: {rng.randint(0, 60)} km/h {rng.choice(('N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'))}\n"
        f"  Humidity: {rng.randint(20, 99)}%"
    )


def log_lines(rng: random.Random, split: P.Split, min_lines: int = 2, max_lines: int = 30) -> str:
    day, lines = stamp(rng), []
    for time in sorted(P.hms(rng) for _ in range(rng.randint(min_lines, max_lines))):
        service, level = rng.choice(SERVICES), rng.choice(LEVELS)
        msg = rng.choice(
            (
                f"GET /v1/{rng.choice(P.NOUNS)}s/{rng.randint(1, 9999)} "
                f"{rng.choice((200, 200, 201, 404, 500))} {rng.randint(1, 900)}ms",
                f"job {P.code(rng, 6)} finished in {rng.randint(1, 120)}s",
                f"queue depth {rng.randint(0, 500)}",
                f"retrying connection to {P.hostname(rng)} (attempt {rng.randint(1, 5)})",
                f"cache hit ratio {rng.randint(50, 99)}%",
            )
        )
        lines.append(f"[{day} {time}] {level} {service}: {msg}")
    return "\n".join(lines)


def quantity(rng: random.Random) -> str:
    unit = rng.choice(list(UNITS))
    lo, hi, step = UNITS[unit]
    return f"{rng.randrange(lo, hi + 1, step)} {unit}"


def recipe(rng: random.Random, split: P.Split) -> str:
    items = rng.sample(INGREDIENTS, rng.randint(3, 7))
    ingredients = "\n".join(f"- {quantity(rng)} {i}" for i in items)
    steps = "\n".join(
        f"{k + 1}. "
        + rng.choice(STEPS).format(i=rng.choice(items), n=rng.randint(2, 45), t=rng.randrange(150, 230, 10))
        for k in range(rng.randint(3, 7))
    )
    dish = f"{rng.choice(P.ADJECTIVES).title()} {rng.choice(items).title()} {rng.choice(P.FOODS).title()}"
    return f"Recipe: {dish}\nServes {rng.randint(1, 8)}\nIngredients:\n{ingredients}\nSteps:\n{steps}"


def search_results(rng: random.Random, split: P.Split) -> str:
    query = f"{rng.choice(P.ADJECTIVES)} {rng.choice(P.NOUNS)}"
    hits = "\n".join(
        f"{k + 1}. {P.title(rng)} - {rng.choice(P.NOUNS)}{rng.choice(('.org', '.net', '.example'))} "
        f"({rng.randint(1, 30)} min read)"
        for k in range(rng.randint(1, 6))
    )
    return f'search("{query}") returned:\n{hits}'


def status_json(rng: random.Random, split: P.Split) -> str:
    return (
        f'{{"service": "{rng.choice(SERVICES)}", "status": "{rng.choice(("ok", "ok", "degraded"))}", '
        f'"uptime_h": {rng.randint(1, 9000)}, "queue": {rng.randint(0, 300)}, "host": "{P.hostname(rng)}"}}'
    )


def meeting_notes(rng: random.Random, split: P.Split) -> str:
    people = [P.person(rng, split) for _ in range(rng.randint(2, 4))]
    actions = "\n".join(
        f"- Action: {rng.choice(people)} to review the {rng.choice(TOPICS)} plan by {rng.choice(P.WEEKDAYS)}"
        for _ in range(rng.randint(1, 4))
    )
    return (
        f"Meeting notes ({stamp(rng)})\nAttendees: {', '.join(people)}\n"
        f"- Discussed the {rng.choice(TOPICS)} and the {rng.choice(TOPICS)}\n{actions}"
    )


def timetable(rng: random.Random, split: P.Split) -> str:
    rows = "\n".join(
        f"{P.clock(rng):>8}  {rng.choice(P.CITIES):<12} platform {rng.randint(1, 12)}  "
        f"{rng.choice(('on time', 'on time', 'delayed'))}"
        for _ in range(rng.randint(2, 8))
    )
    return f"Departures from {rng.choice(P.CITIES)} Central\n{rows}"


def news(rng: random.Random, split: P.Split) -> str:
    heads = "\n".join(
        f"* {rng.choice(P.CITIES)} {rng.choice(('opens', 'delays', 'celebrates', 'plans'))} new "
        f"{rng.choice(P.NOUNS)} {rng.choice(('project', 'festival', 'service', 'museum'))}"
        for _ in range(rng.randint(2, 6))
    )
    return f"News digest, {stamp(rng)}\n{heads}"


CHAT: tuple[Filler, ...] = (small_talk, small_talk, arithmetic, conversion, plan, tiny)
DOCUMENTS: tuple[Filler, ...] = (
    weather,
    log_lines,
    recipe,
    search_results,
    status_json,
    meeting_notes,
    timetable,
    news,
)


def observation(rng: random.Random, split: P.Split) -> str:
    text = turn(OBSERVATION, rng.choice(DOCUMENTS)(rng, split))
    return text + turn(ASSISTANT, rng.choice(OBS_COMMENTS)) if rng.random() < 0.5 else text


def filler(rng: random.Random, split: P.Split, observation_prob: float, max_len: int) -> str | None:
    """A piece of filler of at most max_len characters, or None if not even the smallest fits."""
    for _ in range(12):
        piece = observation(rng, split) if rng.random() < observation_prob else rng.choice(CHAT)(rng, split)
        if len(piece) <= max_len:
            return piece
    piece = tiny(rng, split)
    return piece if len(piece) <= max_len else None
