#!/usr/bin/env python3
"""Writes tests/data/ppl_text.txt: deterministic short stories in simple English for the perplexity
tests (text generated here from the templates below with a fixed seed; no outside source).

    python3 tests/data/make_ppl_text.py > tests/data/ppl_text.txt
"""
import random

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Lucy", "Tim", "Sue"]
ANIMALS = ["dog", "cat", "bird", "frog", "bunny", "duck", "fox", "bear"]
PLACES = ["park", "garden", "forest", "beach", "farm", "yard", "pond", "hill"]
THINGS = ["ball", "kite", "box", "hat", "cake", "flower", "stick", "boat", "book", "toy"]
COLORS = ["red", "blue", "big", "small", "shiny", "green", "yellow", "soft"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "surprised"]


def story(r: random.Random) -> str:
    n, m = r.sample(NAMES, 2)
    a, p, t, c, f = r.choice(ANIMALS), r.choice(PLACES), r.choice(THINGS), r.choice(COLORS), r.choice(FEELINGS)
    he = "she" if n in ("Lily", "Mia", "Anna", "Lucy", "Sue") else "he"
    s = [f"Once upon a time, there was a little {'girl' if he == 'she' else 'boy'} named {n}."]
    s.append(f"{n} liked to play in the {p} with {'her' if he == 'she' else 'his'} {a}.")
    s.append(f"One day, {n} found a {c} {t} under a tree.")
    s.append(f"{he.capitalize()} was very {f} and wanted to show it to {m}.")
    if r.random() < 0.5:
        s.append(f'"Look, {m}! I found a {t}!" said {n}.')
        s.append(f'{m} smiled and said, "That is a very {c} {t}. Can we play with it together?"')
        s.append(f'{n} said, "Yes, let us share it."')
    else:
        s.append(f"But the {a} took the {t} and ran away to the {r.choice(PLACES)}.")
        s.append(f"{n} and {m} ran after the {a}. They looked everywhere.")
        s.append(f"At last they saw the {a} sleeping next to the {t}.")
    s.append(f"They played with the {t} all day long, and the {a} played too.")
    s.append(r.choice([
        "When the sun went down, they went home and had a warm dinner.",
        f"Mom said that sharing is good, and {n} felt {r.choice(FEELINGS)}.",
        f"From that day on, {n} and {m} were best friends.",
        "They learned that it is good to be kind to others.",
    ]))
    return " ".join(s)


def main() -> None:
    r = random.Random(20240615)
    print("\n\n".join(story(r) for _ in range(40)))


if __name__ == "__main__":
    main()
