"""The domain corpus: terse veterinary clinic notes about the tiny world's pets.

Same world (owners, towns, pets), different register: codes, abbreviations, dosages and clinical words
that the pretraining corpus never uses (`DOMAIN_JARGON` lists them and a test checks it). A model
pretrained on the general corpus finds this text surprising, which is what domain adaptation fixes.
"""

from __future__ import annotations

import random

from minitune.data import lexicon as lx
from minitune.data.world import Person, World

# pet species -> clinical species word
SPECIES_TERM = {"cat": "feline", "dog": "canine", "rabbit": "lagomorph", "hen": "avian", "duck": "avian",
                "goose": "avian", "goat": "caprine", "tortoise": "chelonian", "mouse": "murine",
                "pony": "equine"}
# plausible body weight range per species, in kg
WEIGHT_KG = {"cat": (2.5, 7), "dog": (4, 45), "rabbit": (1, 4), "hen": (1.2, 3), "duck": (1, 3.5),
             "goose": (3, 8), "goat": (20, 70), "tortoise": (0.5, 6), "mouse": (0.018, 0.04),
             "pony": (150, 350)}
SEX = ["MN", "FN", "ME", "FE"]
COMPLAINTS = [
    "inappetent x{d}d", "V x{n}", "D x{d}d", "lethargic x{d}d", "lame {leg} x{d}d",
    "pruritus, worse at night",
    "ocular d/c {eye}", "cough x{w}wk", "PU/PD", "head shaking", "wt loss", "sneezing, nasal d/c",
]
EXAMS = [
    "T {temp}, HR {hr}, RR {rr}.", "MM {mm}, CRT {crt}.", "BCS {bcs}/9.", "Hydration ~{deh}% deh.",
    "Abd palp: {abd}.", "Auscult: {aus}.", "Otoscopy: erythema {ear}, brown d/c.",
    "Derm: alopecia + papules ventrum.", "Lameness gr {g}/5 {leg}, pain on flexion.",
]
ASSESSMENTS = [
    "gastroenteritis", "dietary indiscretion", "otitis externa", "pyoderma", "conjunctivitis",
    "osteoarthritis", "dental dz", "URT inf", "cystitis", "FB ingestion", "pancreatitis", "hypothyroidism",
]
DRUGS = [
    "meloxicam {dose1} mg/kg PO SID x{d}d", "maropitant 1 mg/kg SC SID x{d3}d",
    "amoxiclav 12.5 mg/kg PO BID x{d}d", "fenbendazole 50 mg/kg PO SID x3d",
    "buprenorphine 0.02 mg/kg IM q8h", "chlorhexidine wash q48h", "ear cleaner {ear} BID",
    "LRS {fl} ml/kg/h IV", "chloramphenicol drops {eye} TID",
]
FOLLOW_UPS = [
    "Recheck {d}d or PRN.", "O advised re diet.", "Sx booked {day}.", "Rads if no improvement.",
    "Bloods: CBC/biochem pending.", "E-collar. Cage rest 2wk.", "O to call with update {day}.",
]
JARGON_WORDS = [
    "inappetent", "pyoderma", "otitis", "externa", "maropitant", "meloxicam", "amoxiclav", "fenbendazole",
    "buprenorphine", "chlorhexidine", "chloramphenicol", "auscult", "palp", "otoscopy", "erythema",
    "alopecia", "papules", "ventrum", "pruritus", "feline", "canine", "lagomorph", "chelonian", "caprine",
    "murine", "equine", "avian", "prn", "sid", "bid", "tid", "npo", "ddx", "crt", "bcs", "abd", "hx", "rx",
    "deh", "ovh", "cbc", "pcv", "wbc", "lrs", "sx", "dz", "mg", "kg", "inf", "urt", "biochem", "rads",
    "gastroenteritis", "pancreatitis", "cystitis", "conjunctivitis", "osteoarthritis", "premed", "dexmed",
    "propofol", "enterotomy", "interp", "ctrl", "utd", "vacc",
]
# lower-case words that mark the clinic register; none occurs in the pretraining corpus
DOMAIN_JARGON = tuple(JARGON_WORDS)


def _fields(rng: random.Random) -> dict[str, str]:
    """Random clinical values for the templates."""
    return {
        "d": str(rng.randint(2, 7)), "d3": str(rng.randint(2, 4)), "n": str(rng.randint(2, 6)),
        "w": str(rng.randint(1, 3)), "leg": rng.choice(["LF", "RF", "LH", "RH"]),
        "eye": rng.choice(["OS", "OD", "OU"]), "ear": rng.choice(["AD", "AS", "AU"]),
        "temp": f"{rng.randint(37, 40)}.{rng.randint(0, 9)}", "hr": str(rng.randrange(60, 220, 4)),
        "rr": str(rng.randrange(12, 48, 2)), "mm": rng.choice(["pink", "pale", "tacky", "pink/moist"]),
        "crt": rng.choice(["<2s", "2s", ">2s"]), "bcs": str(rng.randint(3, 8)), "deh": str(rng.randint(5, 8)),
        "abd": rng.choice(["NAD", "tense", "painful cranial abd", "gas-filled loops"]),
        "aus": rng.choice(["NAD", "soft murmur gr II/VI", "harsh lung sounds", "crackles R"]),
        "g": str(rng.randint(1, 4)), "dose1": rng.choice(["0.05", "0.1"]), "fl": str(rng.randint(2, 6)),
        "day": rng.choice(lx.WEEKDAYS)[:3].upper(),
    }


def _header(rng: random.Random, owner: Person, title: str) -> str:
    """Case code, clinic, date, patient line: 'C-4821 | Ostley clinic | 14/05 ...'."""
    pet = owner.pet
    assert pet is not None
    low, high = WEIGHT_KG[pet.species]
    weight = f"{rng.uniform(low, high):.1f} kg" if high >= 1 else f"{round(rng.uniform(low, high) * 1000)} g"
    return (f"{title} C-{rng.randint(1000, 9999)} | {owner.town} clinic | {rng.randint(1, 28):02d}/"
            f"{rng.randint(1, 12):02d}\nPT: {pet.name}, {SPECIES_TERM[pet.species]}, {rng.randint(1, 14)}y "
            f"{rng.choice(SEX)}, {weight}. O: {owner.first[0]}. {owner.family}.")


def _consult(rng: random.Random, owner: Person, f: dict[str, str]) -> str:
    """A SOAP consult note: complaint, exam, assessment with differentials, plan."""
    cc = ", ".join(rng.sample(COMPLAINTS, rng.randint(1, 2))).format(**f)
    exam = " ".join(rng.sample(EXAMS, rng.randint(2, 4))).format(**f)
    a, *ddx = rng.sample(ASSESSMENTS, 3)
    plan = "; ".join(rng.sample(DRUGS, rng.randint(1, 2))).format(**f)
    lines = [_header(rng, owner, "CONSULT"), f"CC: {cc}.", f"EXAM: {exam}",
             f"A: ?{a}. DDx: {', '.join(ddx)}.", f"P: {plan}. {rng.choice(FOLLOW_UPS).format(**f)}"]
    if rng.random() < 0.4:
        lines.insert(2, f"HX: {rng.choice(['nil sig', 'vacc UTD', 'prev ' + rng.choice(ASSESSMENTS)])}.")
    return "\n".join(lines)


def _surgery(rng: random.Random, owner: Person, f: dict[str, str]) -> str:
    """A surgery note: procedure, anaesthetic, findings, recovery."""
    proc = rng.choice(["OVH", "castration", "dental scale + polish, 2x ext", "lump removal L flank",
                       "FB removal, enterotomy"])
    iso, spo2 = rng.choice(["1.5", "2", "2.5"]), rng.randint(94, 99)
    course = rng.choice(["Uneventful.", "Mild bleed, ctrl."])
    hour, minute = rng.randint(8, 12), rng.randint(10, 59)
    return "\n".join([
        _header(rng, owner, "SX NOTE"), f"PROC: {proc}.",
        f"GA: premed bup + dexmed IM, induct propofol IV, maint iso {iso}%.",
        f"Intra-op: HR {f['hr']}, SpO2 {spo2}%. {course}",
        f"Recovery: smooth, ext at {hour}:{minute}. {rng.choice(FOLLOW_UPS).format(**f)}",
    ])


def _labs(rng: random.Random, owner: Person, f: dict[str, str]) -> str:
    """A lab result note with flagged values and a one-line interpretation."""
    vals = [f"WBC {rng.randint(4, 30)}.{rng.randint(0, 9)} ({rng.choice(['H', 'N', 'L'])})",
            f"PCV {rng.randint(18, 55)}%", f"ALT {rng.randint(20, 400)} ({rng.choice(['H', 'N'])})",
            f"urea {rng.randint(3, 40)}.{rng.randint(0, 9)}",
            f"glucose {rng.randint(3, 20)}.{rng.randint(0, 9)}"]
    interp = f"Interp: c/w {rng.choice(ASSESSMENTS)}. Tx as per plan. {rng.choice(FOLLOW_UPS).format(**f)}"
    return "\n".join([_header(rng, owner, "LABS"), "CBC/biochem: " + ", ".join(rng.sample(vals, 3)) + ".",
                      interp])


def _phone(rng: random.Random, owner: Person, f: dict[str, str]) -> str:
    """A phone log: time, owner's report, advice."""
    pet = owner.pet
    assert pet is not None
    report = rng.choice(["eating again", "still V", "D resolved", "more lame today", "less pruritus"])
    advice = rng.choice(["cont meds", "stop meloxicam, bring in", "NPO 12h then bland", "recheck as planned"])
    time = f"{rng.randint(8, 17)}:{rng.randint(10, 59)}"
    return (f"TEL {time} O {owner.first[0]}. {owner.family} re {pet.name} ({SPECIES_TERM[pet.species]}): "
            f"{report}. Adv: {advice}. {rng.choice(FOLLOW_UPS).format(**f)}")


def make_clinic_note(rng: random.Random, world: World) -> str:
    """One clinic note (consult, surgery, labs or phone log) about a resident's pet."""
    owner = rng.choice([p for p in world.people if p.pet is not None])
    kind = rng.choice([_consult, _consult, _consult, _surgery, _labs, _phone])
    return kind(rng, owner, _fields(rng))
