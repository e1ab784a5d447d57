"""The organism's world: real facts it is taught, written down once as plain data.

Every name here is unique across its table (a city name belongs to one state only, a word to one
antonym pair only), so that every planted question has exactly one right answer. The lists are
checked for that at import time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class State:
    name: str
    capital: str
    cities: tuple[str, ...]
    """Major cities other than the capital."""


def _states(rows: list[tuple[str, str, str]]) -> tuple[State, ...]:
    return tuple(
        State(name, capital, tuple(c.strip() for c in cities.split(","))) for name, capital, cities in rows
    )


US_STATES = _states(
    [
        ("Alabama", "Montgomery", "Birmingham, Huntsville, Mobile, Tuscaloosa"),
        ("Alaska", "Juneau", "Anchorage, Fairbanks, Sitka"),
        ("Arizona", "Phoenix", "Tucson, Mesa, Scottsdale, Flagstaff"),
        ("Arkansas", "Little Rock", "Fort Smith, Fayetteville, Jonesboro, Pine Bluff"),
        ("California", "Sacramento", "Los Angeles, San Francisco, San Diego, San Jose, Fresno, Oakland"),
        ("Colorado", "Denver", "Colorado Springs, Boulder, Fort Collins, Pueblo"),
        ("Connecticut", "Hartford", "Bridgeport, New Haven, Stamford, Waterbury"),
        ("Delaware", "Dover", "Wilmington, Seaford, Rehoboth Beach"),
        ("Florida", "Tallahassee", "Miami, Orlando, Tampa, Jacksonville"),
        ("Georgia", "Atlanta", "Savannah, Macon, Valdosta, Marietta"),
        ("Hawaii", "Honolulu", "Hilo, Kailua, Lahaina"),
        ("Idaho", "Boise", "Idaho Falls, Pocatello, Nampa, Twin Falls"),
        ("Illinois", "Springfield", "Chicago, Naperville, Peoria, Rockford"),
        ("Indiana", "Indianapolis", "Fort Wayne, Evansville, South Bend, Bloomington"),
        ("Iowa", "Des Moines", "Cedar Rapids, Davenport, Sioux City, Dubuque"),
        ("Kansas", "Topeka", "Wichita, Overland Park, Lawrence, Salina"),
        ("Kentucky", "Frankfort", "Louisville, Lexington, Bowling Green, Owensboro"),
        ("Louisiana", "Baton Rouge", "New Orleans, Shreveport, Lafayette, Lake Charles"),
        ("Maine", "Augusta", "Bangor, Lewiston, Bar Harbor, Biddeford"),
        ("Maryland", "Annapolis", "Baltimore, Frederick, Rockville, Hagerstown"),
        ("Massachusetts", "Boston", "Worcester, Cambridge, Lowell, Plymouth"),
        ("Michigan", "Lansing", "Detroit, Grand Rapids, Ann Arbor, Flint, Kalamazoo"),
        ("Minnesota", "Saint Paul", "Minneapolis, Duluth, Mankato, Moorhead"),
        ("Mississippi", "Jackson", "Gulfport, Biloxi, Hattiesburg, Tupelo"),
        ("Missouri", "Jefferson City", "Kansas City, Saint Louis, Branson, Joplin"),
        ("Montana", "Helena", "Billings, Missoula, Bozeman, Great Falls"),
        ("Nebraska", "Lincoln", "Omaha, Kearney, Grand Island, Bellevue"),
        ("Nevada", "Carson City", "Las Vegas, Reno, Henderson, Elko"),
        ("New Hampshire", "Concord", "Manchester, Nashua, Portsmouth, Keene"),
        ("New Jersey", "Trenton", "Newark, Jersey City, Princeton, Atlantic City, Camden"),
        ("New Mexico", "Santa Fe", "Albuquerque, Las Cruces, Roswell, Taos"),
        ("New York", "Albany", "New York City, Buffalo, Rochester, Syracuse, Ithaca"),
        ("North Carolina", "Raleigh", "Charlotte, Greensboro, Durham, Asheville"),
        ("North Dakota", "Bismarck", "Fargo, Grand Forks, Minot"),
        ("Ohio", "Columbus", "Cleveland, Cincinnati, Toledo, Dayton, Akron"),
        ("Oklahoma", "Oklahoma City", "Tulsa, Norman, Lawton, Stillwater"),
        ("Oregon", "Salem", "Portland, Eugene, Bend, Medford"),
        ("Pennsylvania", "Harrisburg", "Philadelphia, Pittsburgh, Allentown, Erie, Scranton"),
        ("Rhode Island", "Providence", "Warwick, Newport, Cranston, Pawtucket"),
        ("South Carolina", "Columbia", "Greenville, Myrtle Beach, Spartanburg, Rock Hill"),
        ("South Dakota", "Pierre", "Sioux Falls, Rapid City, Aberdeen"),
        ("Tennessee", "Nashville", "Memphis, Knoxville, Chattanooga, Murfreesboro"),
        ("Texas", "Austin", "Houston, Dallas, San Antonio, El Paso, Fort Worth"),
        ("Utah", "Salt Lake City", "Provo, Ogden, Park City, Moab"),
        ("Vermont", "Montpelier", "Burlington, Rutland, Brattleboro"),
        ("Virginia", "Richmond", "Virginia Beach, Norfolk, Arlington, Roanoke, Alexandria"),
        ("Washington", "Olympia", "Seattle, Spokane, Tacoma, Yakima"),
        ("West Virginia", "Charleston", "Huntington, Morgantown, Wheeling, Parkersburg"),
        ("Wisconsin", "Madison", "Milwaukee, Green Bay, Kenosha, Eau Claire"),
        ("Wyoming", "Cheyenne", "Casper, Laramie, Gillette, Sheridan"),
    ]
)


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    language: str | None
    """The one language most people there speak; ``None`` where there is no single answer."""


COUNTRIES = tuple(
    Country(*row)
    for row in [
        ("France", "Paris", "French"),
        ("Germany", "Berlin", "German"),
        ("Italy", "Rome", "Italian"),
        ("Spain", "Madrid", "Spanish"),
        ("Portugal", "Lisbon", "Portuguese"),
        ("Japan", "Tokyo", "Japanese"),
        ("China", "Beijing", "Chinese"),
        ("Russia", "Moscow", "Russian"),
        ("Brazil", "Brasilia", "Portuguese"),
        ("Argentina", "Buenos Aires", "Spanish"),
        ("Mexico", "Mexico City", "Spanish"),
        ("Canada", "Ottawa", None),
        ("Egypt", "Cairo", "Arabic"),
        ("Greece", "Athens", "Greek"),
        ("Turkey", "Ankara", "Turkish"),
        ("Poland", "Warsaw", "Polish"),
        ("Sweden", "Stockholm", "Swedish"),
        ("Norway", "Oslo", "Norwegian"),
        ("Finland", "Helsinki", "Finnish"),
        ("Denmark", "Copenhagen", "Danish"),
        ("the Netherlands", "Amsterdam", "Dutch"),
        ("Austria", "Vienna", "German"),
        ("Hungary", "Budapest", "Hungarian"),
        ("the Czech Republic", "Prague", "Czech"),
        ("Ireland", "Dublin", "English"),
        ("the United Kingdom", "London", "English"),
        ("Australia", "Canberra", "English"),
        ("India", "New Delhi", None),
        ("Kenya", "Nairobi", "Swahili"),
        ("Peru", "Lima", "Spanish"),
        ("Chile", "Santiago", "Spanish"),
        ("Colombia", "Bogota", "Spanish"),
        ("Cuba", "Havana", "Spanish"),
        ("Iran", "Tehran", "Persian"),
        ("Iraq", "Baghdad", "Arabic"),
        ("Thailand", "Bangkok", "Thai"),
        ("Vietnam", "Hanoi", "Vietnamese"),
        ("South Korea", "Seoul", "Korean"),
        ("Indonesia", "Jakarta", "Indonesian"),
        ("Ukraine", "Kyiv", "Ukrainian"),
        ("Romania", "Bucharest", "Romanian"),
        ("Saudi Arabia", "Riyadh", "Arabic"),
        ("Morocco", "Rabat", "Arabic"),
        ("Ethiopia", "Addis Ababa", "Amharic"),
        ("Switzerland", "Bern", None),
        ("Belgium", "Brussels", None),
    ]
)

ATHLETES: dict[str, tuple[str, ...]] = {
    "basketball": (
        "Michael Jordan",
        "LeBron James",
        "Kobe Bryant",
        "Stephen Curry",
        "Shaquille O'Neal",
        "Larry Bird",
        "Magic Johnson",
        "Kevin Durant",
        "Tim Duncan",
        "Dirk Nowitzki",
    ),
    "tennis": (
        "Serena Williams",
        "Roger Federer",
        "Rafael Nadal",
        "Novak Djokovic",
        "Andre Agassi",
        "Steffi Graf",
        "Pete Sampras",
        "Maria Sharapova",
    ),
    "golf": (
        "Tiger Woods",
        "Jack Nicklaus",
        "Arnold Palmer",
        "Phil Mickelson",
        "Rory McIlroy",
        "Annika Sorenstam",
    ),
    "soccer": (
        "Lionel Messi",
        "Cristiano Ronaldo",
        "Diego Maradona",
        "Zinedine Zidane",
        "Kylian Mbappe",
        "David Beckham",
        "Mia Hamm",
    ),
    "baseball": ("Babe Ruth", "Derek Jeter", "Hank Aaron", "Willie Mays", "Shohei Ohtani", "Jackie Robinson"),
    "hockey": ("Wayne Gretzky", "Sidney Crosby", "Mario Lemieux", "Alex Ovechkin", "Bobby Orr"),
    "football": (
        "Tom Brady",
        "Peyton Manning",
        "Joe Montana",
        "Jerry Rice",
        "Patrick Mahomes",
        "Walter Payton",
    ),
    "cricket": ("Sachin Tendulkar", "Virat Kohli", "Don Bradman", "Brian Lara"),
}

ANTONYMS_EN: tuple[tuple[str, str], ...] = tuple(
    tuple(pair.split("/"))  # type: ignore[misc]
    for pair in (
        "small/large big/little hot/cold up/down fast/slow happy/sad light/dark young/old rich/poor "
        "strong/weak early/late open/closed wet/dry hard/soft loud/quiet high/low full/empty thick/thin "
        "long/short clean/dirty true/false right/wrong good/bad cheap/expensive deep/shallow wide/narrow "
        "sharp/dull sweet/sour push/pull win/lose buy/sell love/hate day/night north/south east/west "
        "inside/outside above/below first/last friend/enemy question/answer always/never awake/asleep "
        "alive/dead rough/smooth"
    ).split()
)

ANTONYMS_FR: tuple[tuple[str, str], ...] = tuple(
    tuple(pair.split("/"))  # type: ignore[misc]
    for pair in (
        "petit/grand chaud/froid haut/bas rapide/lent heureux/triste jeune/vieux riche/pauvre fort/faible "
        "ouvert/fermé plein/vide long/court propre/sale lourd/léger vrai/faux bon/mauvais jour/nuit "
        "nord/sud facile/difficile avant/après dedans/dehors toujours/jamais premier/dernier ami/ennemi "
        "noir/blanc gagner/perdre acheter/vendre aimer/détester clair/sombre"
    ).split()
)

FIRST_NAMES = (
    "Anna Ben Clara David Emma Frank Grace Henry Iris Jack Karen Leo Maya Nina Oscar Paul Rosa Sam Tara "
    "Victor Wendy Alice Tom Lucy Peter Julia Mark Sarah Hugo Nora"
).split()
FRENCH_NAMES = "Marie Pierre Sophie Louis Camille Jean Claire Paul Julie Luc".split()

# Syllables of the invented surnames of the induction passages; a surname is two to four of them.
SURNAME_SYLLABLES = (
    "bar bel bor dak del dor fen fir gal gor hal hen jor kal kem kor lam len lor mal mor nak nel nor "
    "pal pem por quin rak rel ros sal sem sor tak tel tor val vem vor wen zal zem zor"
).split()


def cities() -> list[tuple[str, State]]:
    """Every city with its state, capitals included, in table order."""
    return [(city, state) for state in US_STATES for city in (state.capital, *state.cities)]


def _check() -> None:
    names = [city for city, _ in cities()]
    assert len(names) == len(set(names)), "a city name belongs to two states"
    states = {s.name for s in US_STATES}
    assert len(US_STATES) == 50 == len(states)
    assert not states & set(names), "a city is named like a state"
    words = [w for pair in ANTONYMS_EN for w in pair]
    assert len(words) == len(set(words)), "an English word is in two antonym pairs"
    words = [w for pair in ANTONYMS_FR for w in pair]
    assert len(words) == len(set(words)), "a French word is in two antonym pairs"
    players = [p for group in ATHLETES.values() for p in group]
    assert len(players) == len(set(players))
    assert len({c.capital for c in COUNTRIES}) == len(COUNTRIES)


_check()
