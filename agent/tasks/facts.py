"""Kinds of fact for the memory dialogue: how each is stated, asked, and what its values look like.

PHRASES holds, per kind, a header `kind: label` (the label names the field in records and logs), the
statements, and the questions (lines starting with "? "). Templates use {whose} / {Whose} (a
possessive: "my" or "Tovin Marsh's") and {value}, so every phrasing works for the user's own facts and
for other people's. SAMPLERS draws each kind's values from one side of the vocabulary split.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from . import pools as P

Sampler = Callable[[random.Random, P.Split], str]


@dataclass(frozen=True)
class FactKind:
    kind: str
    label: str  # the field name in records and logs: "locker code"
    sample: Sampler  # (rng, split) -> a value in that vocabulary split
    statements: tuple[str, ...]
    questions: tuple[str, ...]


def drawn(make: Callable[[random.Random], str]) -> Sampler:
    return lambda rng, split: P.draw(rng, make, split)


@dataclass(frozen=True)
class Pooled:
    """A sampler for a closed class of values: one word of a small fixed pool (sports, spices...)."""

    pool: tuple[str, ...]

    def __call__(self, rng: random.Random, split: P.Split) -> str:
        return P.draw(rng, P.pick(self.pool), split)

    def invented(self, rng: random.Random) -> str:
        """An invented word styled like the pool's words (capitalised if they are), train split."""
        style = str.title if self.pool[0][:1].isupper() else str
        return P.draw(rng, lambda r: style(P.invented_word(r)), "train")


def first_name(rng: random.Random, split: P.Split) -> str:
    return P.draw(rng, P.first_name, split)


def numbers(lo: int, hi: int) -> Sampler:
    return drawn(lambda r: str(r.randint(lo, hi)))


def doctor(rng: random.Random, split: P.Split) -> str:
    return "Dr. " + P.draw(rng, P.last_name, split)


def api_token(rng: random.Random) -> str:
    return "tok_" + P.code(rng, 10, string.ascii_lowercase + string.digits)


SAMPLERS: dict[str, Sampler] = {
    "birthday": drawn(P.date),
    "pet_name": first_name,
    "favourite_colour": Pooled(P.COLOURS),
    "phone_extension": drawn(lambda r: P.digits(r, 4)),
    "locker_code": drawn(lambda r: P.digits(r, r.randint(4, 6))),
    "flight_number": drawn(lambda r: f"{P.letters(r, 2)} {P.digits(r, r.randint(3, 4))}"),
    "meeting_room": drawn(lambda r: f"{P.letters(r, 1)}-{P.digits(r, 3)}"),
    "allergy": Pooled(P.ALLERGIES),
    "car_plate": drawn(lambda r: f"{P.letters(r, 2)}-{P.digits(r, 3)}-{P.letters(r, 2)}"),
    "wifi_password": drawn(P.passphrase),
    "project_codename": drawn(P.codename),
    "home_city": Pooled(P.CITIES),
    "manager": P.person,
    "employee_id": drawn(lambda r: f"E-{P.digits(r, 6)}"),
    "dentist_appointment": drawn(P.weekday_time),
    "favourite_food": Pooled(P.FOODS),
    "shoe_size": drawn(lambda r: f"{r.randint(35, 48)}{r.choice(('', '.5'))}"),
    "door_code": drawn(lambda r: f"{P.digits(r, 4)}#"),
    "favourite_band": drawn(P.band),
    "birthplace": Pooled(P.CITIES),
    "partner_name": first_name,
    "daughter_name": first_name,
    "favourite_book": drawn(P.title),
    "parking_spot": drawn(lambda r: f"P{r.randint(1, 4)}-{P.digits(r, 3)}"),
    "desk_number": drawn(lambda r: f"{r.randint(1, 9)}-{P.digits(r, 2)}"),
    "passport_number": drawn(lambda r: f"{P.letters(r, 1)}{P.digits(r, 8)}"),
    "bike_lock": drawn(lambda r: "-".join(str(r.randint(0, 9)) for _ in range(4))),
    "favourite_drink": Pooled(P.DRINKS),
    "hobby": Pooled(P.HOBBIES),
    "native_language": Pooled(P.LANGUAGES),
    "train_time": drawn(P.clock),
    "anniversary": drawn(P.date),
    "hotel_room": drawn(lambda r: f"{r.randint(1, 12)}{P.digits(r, 2)}"),
    "ticket_number": drawn(lambda r: f"TK-{P.digits(r, 5)}"),
    "order_number": drawn(lambda r: f"{P.letters(r, 1)}{P.digits(r, 2)}-{P.digits(r, 4)}"),
    "tracking_number": drawn(lambda r: f"TRK{P.code(r, 9)}"),
    "doctor": doctor,
    "gate_number": drawn(lambda r: f"{P.letters(r, 1)}{r.randint(1, 60)}"),
    "seat_number": drawn(lambda r: f"{r.randint(1, 40)}{r.choice('ABCDEF')}"),
    "favourite_sport": Pooled(P.SPORTS),
    "instrument": Pooled(P.INSTRUMENTS),
    "lucky_number": numbers(1, 99),
    "street_address": drawn(P.address),
    "postcode": drawn(lambda r: f"{P.letters(r, 2)}{r.randint(1, 9)} {r.randint(1, 9)}{P.letters(r, 2)}"),
    "server_hostname": drawn(P.hostname),
    "ip_address": drawn(P.ip_address),
    "api_token": drawn(api_token),
    "username": drawn(P.username),
    "favourite_movie": drawn(P.title),
    "team_name": drawn(lambda r: f"{r.choice(P.ADJECTIVES).title()} {r.choice(P.NOUNS).title()}s"),
    "office_floor": numbers(1, 60),
    "haircut_appointment": drawn(P.weekday_time),
    "library_card": drawn(lambda r: f"LC-{P.digits(r, 6)}"),
    "insurance_policy": drawn(lambda r: f"POL-{P.digits(r, 4)}-{P.digits(r, 2)}"),
    "favourite_spice": Pooled(P.SPICES),
    "gym_class": drawn(P.weekday_time),
    "middle_name": first_name,
    "graduation_year": numbers(1960, 2022),
    "sort_code": drawn(lambda r: "-".join(P.digits(r, 2) for _ in range(3))),
    "bus_route": numbers(1, 399),
}

PHRASES = """
birthday: birthday
{Whose} birthday is on {value}.
Remember that {whose} birthday falls on {value}.
For the calendar: {whose} birthday is {value}.
? When is {whose} birthday?
? What day is {whose} birthday again?
? Can you remind me when {whose} birthday is?

pet_name: pet's name
{Whose} pet is called {value}.
The name of {whose} cat is {value}.
{Whose} dog answers to {value}.
? What is {whose} pet called?
? What's the name of {whose} pet?
? Remind me, what is {whose} pet's name?

favourite_colour: favourite colour
{Whose} favourite colour is {value}.
Note that {whose} favourite colour is {value}.
If you need it, {whose} favourite colour is {value}.
? What is {whose} favourite colour?
? Which colour is {whose} favourite?
? Do you remember {whose} favourite colour?

phone_extension: phone extension
{Whose} phone extension is {value}.
You can reach {whose} desk phone on extension {value}.
The extension for {whose} phone is {value}.
? What is {whose} phone extension?
? Which extension reaches {whose} phone?
? Can you tell me {whose} extension?

locker_code: locker code
{Whose} locker code is {value}.
The code for {whose} locker is {value}.
Please remember that {whose} locker opens with {value}.
? What is {whose} locker code?
? What's the code for {whose} locker?
? Which code opens {whose} locker?

flight_number: flight number
{Whose} flight number is {value}.
{Whose} flight tomorrow is {value}.
The booking says {whose} flight is {value}.
? What is {whose} flight number?
? Which flight is {whose} flight?
? Can you remind me of {whose} flight number?

meeting_room: meeting room
{Whose} meeting is in room {value}.
The room booked for {whose} meeting is {value}.
Heads up: {whose} meeting moved to room {value}.
? Which room is {whose} meeting in?
? Where is {whose} meeting?
? What room did {whose} meeting get?

allergy: allergy
{Whose} allergy is to {value}.
Be careful: {whose} doctor confirmed an allergy to {value}.
For the record, {whose} only allergy is {value}.
? What is {whose} allergy?
? What was {whose} allergy again?
? Which allergy should I remember for {whose} file?

car_plate: car plate
{Whose} car plate is {value}.
The number plate on {whose} car reads {value}.
{Whose} car is registered as {value}.
? What is {whose} car plate?
? What does the plate on {whose} car say?
? Which plate number is {whose} car?

wifi_password: wifi password
The wifi password at {whose} flat is {value}.
{Whose} wifi password is {value}.
To get online at {whose} place, use the password {value}.
? What is the wifi password at {whose} flat?
? What's {whose} wifi password?
? Remind me of {whose} wifi password?

project_codename: project codename
{Whose} project is codenamed {value}.
Internally, {whose} project goes by {value}.
The codename of {whose} project is {value}.
? What is {whose} project codename?
? What's the codename of {whose} project?
? Which codename does {whose} project use?

home_city: home city
{Whose} home city is {value}.
These days {whose} home is in {value}.
For the address book, {whose} home city is {value}.
? What is {whose} home city?
? Which city is {whose} home in?
? Where is {whose} home these days?

manager: manager
{Whose} manager is {value}.
Since the reorg, {whose} manager has been {value}.
The person {whose} team reports to is {value}.
? Who is {whose} manager?
? Who does {whose} team report to?
? Can you remind me who {whose} manager is?

employee_id: employee ID
{Whose} employee ID is {value}.
On the HR system, {whose} ID is {value}.
Use {value} as {whose} employee ID.
? What is {whose} employee ID?
? Which ID does HR have for {whose} record?
? Remind me of {whose} employee ID?

dentist_appointment: dentist appointment
{Whose} dentist appointment is on {value}.
The dentist moved {whose} appointment to {value}.
Reminder: {whose} dentist appointment is {value}.
? When is {whose} dentist appointment?
? What time is {whose} appointment at the dentist?
? Remind me when {whose} dentist appointment is?

favourite_food: favourite food
{Whose} favourite food is {value}.
Nothing beats {value} as far as {whose} taste goes.
If you cook, {whose} favourite dish is {value}.
? What is {whose} favourite food?
? Which dish is {whose} favourite?
? What should I cook to match {whose} favourite food?

shoe_size: shoe size
{Whose} shoe size is {value}.
For the boots, {whose} size is {value}.
Order size {value}, that's {whose} shoe size.
? What is {whose} shoe size?
? Which size are {whose} shoes?
? What size should I order for {whose} shoes?

door_code: door code
The door code for {whose} building is {value}.
{Whose} front door code is {value}.
To get into {whose} building, type {value}.
? What is the door code for {whose} building?
? What's {whose} door code?
? Which code opens {whose} front door?

favourite_band: favourite band
{Whose} favourite band is {value}.
On repeat all year, {whose} favourite band has been {value}.
The band at the top of {whose} list is {value}.
? What is {whose} favourite band?
? Which band is {whose} favourite?
? Remind me of {whose} favourite band?

birthplace: birthplace
{Whose} birthplace is {value}.
{Whose} birth certificate says {value}.
The city of {whose} birth is {value}.
? What is {whose} birthplace?
? Which city was {whose} birthplace?
? Which city is on {whose} birth certificate?

partner_name: partner's name
{Whose} partner is called {value}.
The name of {whose} partner is {value}.
{Whose} partner's name is {value}.
? What is {whose} partner called?
? What's the name of {whose} partner?
? Remind me of {whose} partner's name?

daughter_name: daughter's name
{Whose} daughter is called {value}.
The name of {whose} daughter is {value}.
{Whose} little girl is named {value}.
? What is {whose} daughter called?
? What's the name of {whose} daughter?
? Remind me of {whose} daughter's name?

favourite_book: favourite book
{Whose} favourite book is {value}.
The novel on {whose} nightstand forever is {value}.
If you buy a book, {whose} favourite is {value}.
? What is {whose} favourite book?
? Which book is {whose} favourite?
? What was the title of {whose} favourite book?

parking_spot: parking spot
{Whose} parking spot is {value}.
The garage assigned {whose} car to spot {value}.
Park in {value}, that's {whose} spot.
? What is {whose} parking spot?
? Which spot is {whose} parking space?
? Where does {whose} car get parked?

desk_number: desk number
{Whose} desk number is {value}.
After the move, {whose} desk is {value}.
You will find {whose} desk at {value}.
? What is {whose} desk number?
? Which desk is {whose} desk?
? Where is {whose} desk now?

passport_number: passport number
{Whose} passport number is {value}.
For the visa form, {whose} passport is {value}.
The number in {whose} passport is {value}.
? What is {whose} passport number?
? Which number is in {whose} passport?
? Remind me of {whose} passport number?

bike_lock: bike lock combination
{Whose} bike lock combination is {value}.
The combination of {whose} bike lock is {value}.
{Whose} bike lock opens with {value}.
? What is {whose} bike lock combination?
? Which combination opens {whose} bike lock?
? How do I open {whose} bike lock?

favourite_drink: favourite drink
{Whose} favourite drink is the {value}.
At the cafe, {whose} usual order is the {value}.
Get the {value}, that's {whose} favourite.
? What is {whose} favourite drink?
? What is {whose} usual order at the cafe?
? Which drink should I get for {whose} order?

hobby: hobby
{Whose} hobby is {value}.
On weekends {whose} favourite pastime is {value}.
{Whose} big hobby these days is {value}.
? What is {whose} hobby?
? What is {whose} favourite pastime?
? Which hobby is {whose} big one?

native_language: native language
{Whose} native language is {value}.
Growing up, {whose} first language was {value}.
{Whose} mother tongue is {value}.
? What is {whose} native language?
? Which language was {whose} first language?
? What is {whose} mother tongue?

train_time: usual train
{Whose} usual train leaves at {value}.
Every morning {whose} train departs at {value}.
{Whose} commute starts with the {value} train.
? When does {whose} usual train leave?
? What time is {whose} morning train?
? Which train does {whose} commute start with?

anniversary: anniversary
{Whose} wedding anniversary is on {value}.
Mark the calendar: {whose} anniversary is {value}.
{Whose} anniversary falls on {value}.
? When is {whose} anniversary?
? What date is {whose} wedding anniversary?
? Remind me when {whose} anniversary falls?

hotel_room: hotel room
{Whose} hotel room is number {value}.
The front desk put {whose} stay in room {value}.
At the hotel, {whose} room is {value}.
? What is {whose} hotel room?
? Which room is {whose} hotel room?
? What room number did {whose} stay get?

ticket_number: ticket number
{Whose} support ticket number is {value}.
The helpdesk opened {whose} ticket as {value}.
Track {whose} issue under ticket {value}.
? What is {whose} ticket number?
? Which ticket is {whose} support issue?
? Under which number is {whose} ticket?

order_number: order number
{Whose} order number is {value}.
The shop confirmed {whose} order as {value}.
{Whose} purchase went through as order {value}.
? What is {whose} order number?
? Which order number did {whose} purchase get?
? What did the shop confirm as {whose} order?

tracking_number: tracking number
{Whose} parcel tracking number is {value}.
The courier gave {whose} parcel the number {value}.
Track {whose} parcel with {value}.
? What is {whose} tracking number?
? How do I track {whose} parcel?
? Which number tracks {whose} parcel?

doctor: doctor
{Whose} doctor is {value}.
At the clinic, {whose} doctor is {value}.
{Whose} family doctor is {value}.
? Who is {whose} doctor?
? Which doctor sees {whose} family?
? Who should I call about {whose} clinic visits?

gate_number: gate
{Whose} flight boards at gate {value}.
The airport moved {whose} gate to {value}.
{Whose} departure gate is {value}.
? Which gate is {whose} flight at?
? What is {whose} departure gate?
? Where does {whose} flight board?

seat_number: seat
{Whose} seat is {value}.
On the plane, {whose} seat is {value}.
The check-in gave {whose} booking seat {value}.
? What is {whose} seat?
? Which seat did {whose} booking get?
? Where is {whose} seat on the plane?

favourite_sport: favourite sport
{Whose} favourite sport is {value}.
Above all, {whose} favourite sport to watch is {value}.
The sport {whose} weekends revolve around is {value}.
? What is {whose} favourite sport?
? Which sport is {whose} favourite?
? What sport do {whose} weekends revolve around?

instrument: instrument
{Whose} instrument is the {value}.
In the band, {whose} instrument is the {value}.
{Whose} music teacher teaches the {value}.
? What is {whose} instrument?
? Which instrument is {whose} instrument?
? What does {whose} music teacher teach?

lucky_number: lucky number
{Whose} lucky number is {value}.
For the raffle, {whose} lucky number is {value}.
{Whose} favourite number has always been {value}.
? What is {whose} lucky number?
? Which number is {whose} lucky one?
? What number should I pick for {whose} raffle?

street_address: street address
{Whose} street address is {value}.
Send it to {value}, that's {whose} address.
{Whose} new address is {value}.
? What is {whose} street address?
? Where should I send {whose} mail?
? What is {whose} new address?

postcode: postcode
{Whose} postcode is {value}.
The form needs {whose} postcode, which is {value}.
{Whose} postal code is {value}.
? What is {whose} postcode?
? Which postcode goes on {whose} form?
? What is {whose} postal code?

server_hostname: server
{Whose} service runs on the host {value}.
{Whose} server is {value}.
Deploy to {value}, that's {whose} server.
? Which host does {whose} service run on?
? What is {whose} server?
? Where do I deploy {whose} service?

ip_address: IP address
{Whose} workstation IP address is {value}.
The router gave {whose} machine the IP {value}.
{Whose} IP address is {value}.
? What is {whose} IP address?
? Which IP does {whose} machine have?
? What IP did the router give {whose} machine?

api_token: API token
{Whose} API token is {value}.
The dashboard issued {whose} token {value}.
Use {value} as {whose} API token.
? What is {whose} API token?
? Which token did the dashboard issue for {whose} account?
? Remind me of {whose} API token?

username: username
{Whose} username is {value}.
{Whose} login name on the forum is {value}.
Sign in as {value}, that's {whose} account.
? What is {whose} username?
? What's {whose} login name on the forum?
? Which account name does {whose} login use?

favourite_movie: favourite film
{Whose} favourite film is {value}.
Movie night rule: {whose} favourite film is {value}.
The film {whose} heart belongs to is {value}.
? What is {whose} favourite film?
? Which movie is {whose} favourite?
? What film should we watch for {whose} movie night?

team_name: team
{Whose} team is called the {value}.
At the quiz, {whose} team plays as the {value}.
{Whose} squad's name is the {value}.
? What is {whose} team called?
? Which team name does {whose} quiz team use?
? What's the name of {whose} squad?

office_floor: office floor
{Whose} office is on floor {value}.
Take the lift to floor {value} for {whose} office.
{Whose} team sits on floor {value}.
? Which floor is {whose} office on?
? What floor does {whose} team sit on?
? Where should I take the lift for {whose} office?

haircut_appointment: haircut appointment
{Whose} haircut is booked for {value}.
The salon has {whose} appointment on {value}.
{Whose} next haircut is {value}.
? When is {whose} haircut?
? What time is {whose} salon appointment?
? When is {whose} next haircut?

library_card: library card
{Whose} library card number is {value}.
The library issued {whose} card as {value}.
{Whose} card at the library is {value}.
? What is {whose} library card number?
? Which card number did the library issue for {whose} account?
? What is {whose} library card?

insurance_policy: insurance policy
{Whose} insurance policy number is {value}.
The insurer lists {whose} policy as {value}.
Quote {value} for {whose} insurance claims.
? What is {whose} insurance policy number?
? Which policy does the insurer list for {whose} account?
? What do I quote for {whose} insurance?

favourite_spice: favourite spice
{Whose} favourite spice is {value}.
In every stew, {whose} secret ingredient is {value}.
{Whose} spice rack is mostly {value}.
? What is {whose} favourite spice?
? Which secret ingredient goes in {whose} stew?
? What spice fills {whose} spice rack?

gym_class: gym class
{Whose} gym class is on {value}.
The spin class {whose} coach booked is {value}.
{Whose} weekly workout session is {value}.
? When is {whose} gym class?
? What time is {whose} weekly workout?
? When did {whose} coach book the class?

middle_name: middle name
{Whose} middle name is {value}.
On the certificate, {whose} middle name reads {value}.
Few people know {whose} middle name is {value}.
? What is {whose} middle name?
? Which middle name is on {whose} certificate?
? Do you know {whose} middle name?

graduation_year: graduation year
{Whose} graduation year was {value}.
{Whose} class graduated in {value}.
The diploma shows {whose} graduation in {value}.
? What was {whose} graduation year?
? When did {whose} class graduate?
? Which year does {whose} diploma show?

sort_code: bank sort code
{Whose} bank sort code is {value}.
For transfers, {whose} sort code is {value}.
The sort code on {whose} account is {value}.
? What is {whose} sort code?
? Which sort code is on {whose} account?
? What do I use as {whose} sort code?

bus_route: bus route
{Whose} bus home is the number {value}.
To get to {whose} place, take bus {value}.
{Whose} usual bus route is {value}.
? Which bus does {whose} commute home use?
? What bus do I take to {whose} place?
? What is {whose} usual bus route?
"""


def parse(phrases: str) -> dict[str, FactKind]:
    kinds = {}
    for block in phrases.strip().split("\n\n"):
        header, *lines = block.splitlines()
        kind, label = header.split(": ")
        questions = tuple(line[2:] for line in lines if line.startswith("? "))
        statements = tuple(line for line in lines if not line.startswith("? "))
        if kind in kinds:
            raise ValueError(f"fact kind {kind!r} is defined twice")
        kinds[kind] = FactKind(kind, label, SAMPLERS[kind], statements, questions)
    if set(kinds) != set(SAMPLERS):
        raise ValueError(f"fact kinds without phrases or samplers: {set(kinds) ^ set(SAMPLERS)}")
    return kinds


KINDS: dict[str, FactKind] = parse(PHRASES)


def fact_kinds() -> list[str]:
    return list(KINDS)
