"""Context recognizers: names and places found by the words in front of them.

spaCy's small English model misses lone first names ("my son Ellis") and
small towns ("we moved to Ballarat"); the words before them say what they
are. These are Presidio `PatternRecognizer`s whose patterns are a look-behind
on such cue phrases (Presidio matches with the `regex` module, which allows
variable-length look-behind) followed by a capitalised name, so only the name
itself becomes the span:

- PERSON after a possessive + relation/role noun ("my sister", "our
  landlord,"), a self-introduction ("I'm", "my name is", "named", "called"),
  or a salutation ("Dear", "Hi", "Thanks,");
- LOCATION after a verb of living or moving + preposition ("live in", "moved
  to", "flying from", "grew up in") or "the town/city of".

Capitalised words that follow such cues without being names (months, days,
"Sir", "Team", pronouns...) are excluded; `tests/pii` measures the false
detections on PII-free sentences.
"""

from __future__ import annotations

from typing import Any

#: the labels these recognizers give
CONTEXT_LABELS = ("PERSON", "LOCATION")

RELATIONS = (
    "son", "daughter", "wife", "husband", "partner", "spouse", "fiance", "fiancé", "fiancée", "girlfriend",
    "boyfriend", "mother", "father", "mum", "mom", "dad", "brother", "sister", "sibling", "twin", "grandmother",
    "grandfather", "grandma", "grandpa", "granny", "grandson", "granddaughter", "aunt", "uncle", "cousin", "niece",
    "nephew", "stepson", "stepdaughter", "stepmother", "stepfather", "friend", "colleague", "coworker",
    "co-worker", "boss", "manager", "supervisor", "neighbour", "neighbor", "landlord", "landlady", "tenant",
    "flatmate", "roommate", "housemate", "doctor", "dentist", "therapist", "nurse", "surgeon", "GP", "lawyer",
    "solicitor", "attorney", "accountant", "teacher", "tutor", "coach", "mentor", "client", "assistant",
    "child", "kid", "baby", "toddler", "boy", "girl", "ex", "in-law", "godson", "goddaughter", "vet", "agent",
)
QUALIFIERS = ("late", "new", "old", "best", "younger", "older", "little", "big", "eldest", "oldest", "youngest",
              "twin", "former", "dear", "good", "close")
INTRODUCTIONS = ("I'm", "I am", "my name is", "My name is", "my name's", "name's", "named", "called", "call me",
                 "Call me", "this is", "This is")
SALUTATIONS = ("Dear", "Hi", "Hello", "Hey", "Thanks,", "Thank you,", "Cheers,", "Regards,", "Best,",
               "Best regards,", "Kind regards,", "Sincerely,", "Love,", "Congratulations,", "Welcome,")
PLACE_VERBS = ("live", "lives", "living", "lived", "moved", "move", "moving", "relocate", "relocated", "relocating",
               "based", "born", "raised", "grew up", "growing up", "settled", "fly", "flying", "flew", "flight",
               "travel", "travelling", "traveling", "travelled", "traveled", "trip", "holiday", "vacation",
               "visit", "visiting", "visited", "heading", "headed", "going", "drive", "driving", "commute",
               "commuting", "staying", "stay", "stayed", "work", "works", "working", "study", "studying", "home")
PLACE_PREPOSITIONS = ("in", "to", "from", "at", "near", "around", "out of", "back to", "outside", "into")
NOT_NAMES = (
    "I", "I'm", "A", "An", "The", "This", "That", "These", "Those", "It", "We", "You", "He", "She", "They", "My",
    "Our", "Your", "His", "Her", "Their", "Sir", "Madam", "Mr", "Mrs", "Ms", "Miss", "Dr", "Prof", "Team", "All", "Everyone",
    "Everybody", "There", "Here", "Again", "Yes", "No", "Sure", "Okay", "Ok", "Please", "Thanks", "Thank",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January", "February", "March",
    "April", "May", "June", "July", "August", "September", "October", "November", "December", "Christmas",
    "Easter", "Today", "Tomorrow", "Yesterday", "Not", "Just", "Also", "So", "Very", "Really", "Happy", "Glad",
    "Sorry", "Afraid", "Going", "Looking", "Trying", "Back", "Home", "Work", "School", "Church", "Hospital",
    "Town", "City", "Bed", "Friends", "Family", "Customer", "Support", "Service", "Assistant", "User", "AI",
    "English", "Spanish", "French", "German", "Chinese", "Italian",
)
#: capitalised words after "in"/"near" that are not places
NOT_PLACES = (
    "Excel", "Word", "Python", "Java", "Chrome", "Firefox", "Safari", "Windows", "Linux", "Settings", "Preferences",
    "General", "Advanced", "Chapter", "Section", "Part", "Step", "Room", "Spring", "Summer", "Autumn", "Fall",
    "Winter", "Q1", "Q2", "Q3", "Q4", "Latin", "Greek", "Arabic", "Japanese", "Portuguese", "Russian", "Hindi",
    "Mandarin", "Dutch", "Polish", "Korean", "Turkish", "Swedish", "Total", "Detail", "Person", "Public", "Private",
    "Theory", "Practice", "Addition", "Particular", "Short", "Fact", "Case", "Order", "Time", "Future",
)
#: sentence-initial words followed by a comma that are not vocatives ("However, ...")
DISCOURSE = (
    "However", "Also", "Then", "Next", "First", "Second", "Third", "Now", "So", "Well", "Oh", "Ah", "Hmm", "Still",
    "Instead", "Meanwhile", "Otherwise", "Besides", "Therefore", "Thus", "Hence", "Anyway", "Overall", "Plus",
    "Remember", "Note", "Again", "Together", "Alternatively", "Afterwards", "Later", "Sometimes", "Often",
    "Tonight", "Look", "Listen", "Wait", "Great", "Perfect", "Done", "Absolutely", "Indeed", "Of", "In", "On",
    "At", "For", "With", "After", "Before", "Once", "If", "When", "While", "Because", "Although", "Though", "But",
    "And", "Or", "Yet", "Unless", "Since", "Until", "Whether", "Where", "What", "Why", "How", "Who", "Which",
    "Congratulations", "Welcome", "Cheers", "Regards", "Best", "Sincerely", "Love", "Hi", "Hello", "Hey", "Dear",
    "Morning", "Evening", "Bye", "Goodbye", "Fine", "Right", "True", "Exactly", "Correct", "Agreed", "Honestly",
)
def _none_of(*lists: tuple[str, ...]) -> str:
    """A look-ahead refusing any of the words in `lists` as the next whole word."""
    return rf"(?!(?:{'|'.join(w for words in lists for w in words)})\b)"


#: one capitalised word (with inner hyphen/apostrophe: O'Neil, Smith-Jones, McDonald), up to three of them
_WORD = r"(?:[A-Z]'[A-Z][a-z]+|[A-Z][a-z]*[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*|[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*)"
_TITLE = r"(?:(?:Dr|Mr|Mrs|Ms|Mx|Prof)\.?\s+)?"
_NAME = rf"{_none_of(NOT_NAMES)}{_WORD}(?:\s+{_none_of(NOT_NAMES)}{_WORD}){{0,2}}"


def _alt(words: tuple[str, ...]) -> str:
    return "|".join(sorted((w.replace(" ", r"\s+").replace(".", r"\.") for w in words), key=len, reverse=True))


def person_patterns() -> list[tuple[str, str, float]]:
    """(name, regex, score) of the PERSON context patterns.

    Besides relation, introduction and salutation cues: a name after a title
    ("Dr. Nicholls"), and a lone capitalised word addressed to someone: at a
    sentence start followed by a comma and a lower-case word ("Carole, call
    your bank"), after "Sure,"/"Thanks,"-like words, or closing a sentence
    after a comma ("..., Teresa."). Discourse words ("However,", "-ly"
    adverbs) are excluded.
    """
    relation = (rf"(?<=\b(?i:my|our|his|her|their|your)\s+(?:(?i:{_alt(QUALIFIERS)})\s+)?"
                rf"(?i:{_alt(RELATIONS)})(?:,|\s+is|\s+was)?\s+{_TITLE})")
    intro = rf"(?<=(?:^|[\s(\"'])(?:{_alt(INTRODUCTIONS)})\s+{_TITLE})"
    salute = rf"(?<=(?:^|[\n.!?]\s*|\s)(?:{_alt(SALUTATIONS)})\s+{_TITLE})"
    not_word = _none_of(NOT_NAMES, DISCOURSE) + r"(?![A-Za-z]+ly\b)"
    title = r"(?<=\b(?:Dr|Mr|Mrs|Ms|Mx|Prof)\.?\s+)"
    vocative_start = rf"(?<=(?:^|[.!?:]\s+)){not_word}{_WORD}(?=,\s+[a-z])"
    after_reply = (rf"(?<=\b(?:Sure|Okay|OK|Ok|Yes|No|Well|Thanks|Thank you|Right|Sorry|Of course|Good luck|"
                   rf"Good morning|Good afternoon|Good evening|Congratulations|Welcome|Well done),\s+){not_word}{_WORD}\b")
    vocative_end = rf"(?<=[a-z0-9],\s+){not_word}{_WORD}(?=[.!?;:](?:\s|$)|,\s+[a-z])"
    contact = (rf"(?<=\b(?i:call|ask|tell|email|e-mail|text|contact|thank|invite|celebrate|congratulate|remind|"
               rf"message|phone|ring|meet)\s+){not_word}{_NAME}\b")
    return [("relation + name", relation + _NAME + r"\b", 0.6),
            ("introduction + name", intro + _NAME + r"\b", 0.5),
            ("salutation + name", salute + _NAME + r"\b", 0.5),
            ("title + name", title + _NAME + r"\b", 0.6),
            ("vocative at sentence start", vocative_start, 0.4),
            ("vocative after a reply word", after_reply, 0.4),
            ("vocative closing a sentence", vocative_end, 0.4),
            ("contact verb + name", contact, 0.4)]


def location_patterns() -> list[tuple[str, str, float]]:
    """(name, regex, score) of the LOCATION context patterns."""
    moved = (rf"(?<=\b(?i:{_alt(PLACE_VERBS)})(?:\s+(?:here|there|out|over|abroad|back|down|up))?"
             rf"\s+(?:{_alt(PLACE_PREPOSITIONS)})\s+)")
    town = r"(?<=\b(?i:the\s+(?:town|city|village|suburb|county|state|region|province)\s+of)\s+)"
    from_to = rf"(?<=\bfrom\s+{_NAME}\s+to\s+)"
    not_word = _none_of(NOT_NAMES, NOT_PLACES)
    preposition = rf"(?<=\b(?:in|near|around|outside|across)\s+){not_word}{_NAME}\b"
    return [("place verb + place", moved + _NAME + r"\b", 0.5), ("town of + place", town + _NAME + r"\b", 0.6),
            ("from X to + place", from_to + _NAME + r"\b", 0.5), ("preposition + place", preposition, 0.35)]


def context_recognizers() -> list[Any]:
    """Presidio recognizers for PERSON and LOCATION from their cue phrases."""
    import regex
    from presidio_analyzer import Pattern, PatternRecognizer

    # case matters here (Presidio's default flags ignore it): a name is a capitalised word
    flags = regex.DOTALL | regex.MULTILINE
    return [
        PatternRecognizer(supported_entity="PERSON", name="PersonContextRecognizer", global_regex_flags=flags,
                          patterns=[Pattern(n, r, s) for n, r, s in person_patterns()]),
        PatternRecognizer(supported_entity="LOCATION", name="LocationContextRecognizer", global_regex_flags=flags,
                          patterns=[Pattern(n, r, s) for n, r, s in location_patterns()]),
    ]
