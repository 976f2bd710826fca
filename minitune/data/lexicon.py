"""Every name and noun the tiny world may use: the closed vocabulary, as plain lists.

A small model learns a small world well, so all text is built from these lists and the fixed words of the
templates; nothing else enters. The reserved company's names live in `knowledge.py` and must never be
added here, or they would leak into the pretraining corpus.
"""

FEMALE_NAMES = [
    "Mira", "Tessa", "Ilka", "Nell", "Orla", "Wren", "Sela", "Faye", "Runa", "Lisbet", "Anka", "Dora",
    "Hilde", "Maren", "Petra", "Edda", "Greta", "Isla", "Jenna", "Kira", "Lotte", "Nessa", "Rosin", "Tilda",
]
MALE_NAMES = [
    "Tom", "Bram", "Osric", "Jory", "Pell", "Edric", "Hob", "Cael", "Davin", "Lorn", "Mattis", "Rafe",
    "Tobin", "Ulf", "Wendel", "Arno", "Fenn", "Gil", "Hal", "Ivo", "Kester", "Ned", "Piet", "Soren",
]
FAMILY_NAMES = [
    "Tolan", "Ashby", "Brindle", "Corrow", "Dunley", "Everitt", "Fallow", "Greaves", "Harlow", "Inchley",
    "Jessop", "Larkin", "Mossop", "Nettle", "Orrin", "Pellow", "Rookwood", "Sallow", "Thorne", "Umber",
    "Vance", "Wickham", "Yarrow", "Calloway",
]

TOWN_NAMES = [
    "Bramwick", "Ostley", "Dunmere", "Fenholt", "Carrowby", "Ashmere", "Tillford", "Wexham", "Pellbridge",
    "Harrowdale", "Saltby", "Gorsewick", "Kelmouth", "Nethercott", "Oakhollow", "Rillstone", "Tamberley",
    "Westcombe",
]
REGIONS = ["the North Fells", "the Low Marsh", "the Reed Coast", "the Amber Hills", "the Westwold"]
RIVERS = ["Ousel", "Brane", "Tamber", "Wendle", "Skell", "Merrow"]
HILLS = ["Crag Hill", "Beacon Hill", "Hob Tor", "Grey Knoll", "Windy Rise"]
# feature kind -> how a sentence places a town beside it ({name} is the river or hill, where it has one)
FEATURES = {
    "river": "on the banks of the river {name}",
    "hill": "at the foot of {name}",
    "sea": "by the sea",
    "lake": "beside a wide lake",
    "forest": "at the edge of a dark forest",
}
TOWN_SIZES = ["small", "quiet", "busy", "old", "large", "windy", "pretty", "tiny"]
KNOWN_FOR = [
    "cheese", "wool", "apples", "boats", "bells", "pottery", "honey", "bread", "its old mill",
    "its stone bridge", "its harbour", "its clock tower", "its summer fair", "its fish market",
]
PLACES = [
    "market", "bridge", "mill", "harbour", "library", "school", "square", "park", "orchard", "field",
    "woods", "well", "tea shop", "post office", "town hall", "river bank", "bakery", "station",
]
# where something can be found, relative to a place ("next to the mill")
LOCATIONS = [
    "next to the {p}", "behind the {p}", "across the road from the {p}", "near the {p}", "past the {p}",
    "just beyond the {p}", "on the far side of the {p}", "at the end of the lane by the {p}",
]

JOBS = [
    "baker", "farmer", "fisher", "teacher", "smith", "carpenter", "potter", "weaver", "miller", "doctor",
    "nurse", "sailor", "builder", "painter", "tailor", "cook", "gardener", "shepherd", "grocer", "clerk",
    "driver", "musician", "librarian", "vet", "beekeeper", "boat builder", "shop keeper", "singer",
]
LIKES = [
    "rain", "snow", "music", "tea", "apples", "cheese", "boats", "dancing", "books", "long walks",
    "fishing", "singing", "the sea", "card games", "soup", "fresh bread", "honey", "gardens", "bells",
    "kites", "swimming", "cold mornings", "loud noises", "crowds", "thunder", "mud", "early starts",
    "plums", "riddles", "old maps", "sad songs", "hot days", "the wind", "pancakes",
]

# species -> (plural, sound verb, food, home, what it does all day)
ANIMALS = {
    "cat": ("cats", "purred", "fish", "by the fire", "slept in the sun"),
    "dog": ("dogs", "barked", "bones", "in a wooden kennel", "chased sticks"),
    "goat": ("goats", "bleated", "grass", "in a field", "climbed on the wall"),
    "hen": ("hens", "clucked", "seeds", "in a coop", "scratched in the yard"),
    "duck": ("ducks", "quacked", "bread", "by the pond", "swam in circles"),
    "horse": ("horses", "neighed", "hay", "in a stable", "pulled the cart"),
    "rabbit": ("rabbits", "thumped", "carrots", "in a hutch", "dug holes"),
    "fox": ("foxes", "yelped", "mice", "in a den", "hunted at night"),
    "owl": ("owls", "hooted", "mice", "in a hollow tree", "watched the fields"),
    "crow": ("crows", "cawed", "seeds", "in a tall tree", "stole shiny things"),
    "hedgehog": ("hedgehogs", "snuffled", "beetles", "under a hedge", "rolled into a ball"),
    "badger": ("badgers", "grunted", "worms", "in a sett", "dug all night"),
    "otter": ("otters", "squeaked", "fish", "by the river", "played in the water"),
    "mouse": ("mice", "squeaked", "cheese", "in a hole in the wall", "ran along the shelves"),
    "sheep": ("sheep", "bleated", "grass", "on the hill", "stood in the rain"),
    "cow": ("cows", "mooed", "grass", "in a barn", "chewed slowly"),
    "pig": ("pigs", "grunted", "apples", "in a sty", "rolled in the mud"),
    "frog": ("frogs", "croaked", "flies", "by the pond", "jumped from stone to stone"),
    "heron": ("herons", "squawked", "fish", "by the river", "stood very still"),
    "swan": ("swans", "hissed", "weeds", "on the lake", "glided on the water"),
    "donkey": ("donkeys", "brayed", "hay", "in a paddock", "carried sacks"),
    "tortoise": ("tortoises", "hissed", "lettuce", "in a box of straw", "walked very slowly"),
    "squirrel": ("squirrels", "chattered", "nuts", "in an oak tree", "buried nuts"),
    "goose": ("geese", "honked", "grass", "by the pond", "chased people"),
    "pony": ("ponies", "neighed", "hay", "in a stable", "trotted round the field"),
}
PET_SPECIES = ["cat", "dog", "rabbit", "hen", "duck", "goat", "tortoise", "mouse", "pony", "goose"]
PET_NAMES = [
    "Pip", "Bix", "Moss", "Nib", "Sooty", "Clover", "Biscuit", "Pepper", "Fig", "Juniper", "Button",
    "Tansy", "Bramble", "Socks", "Dot", "Hazel", "Patch", "Toffee", "Maple", "Smudge",
]

COLOURS = [
    "red", "blue", "green", "yellow", "grey", "black", "white", "brown", "orange", "purple", "pink", "silver",
]
# product category -> what it is for (completes "it is good for ...")
CATEGORIES = {
    "kettle": "boiling water", "lamp": "lighting a room at night", "chair": "sitting by the fire",
    "basket": "carrying fruit", "rope": "tying up boats", "net": "catching fish", "jug": "pouring milk",
    "pan": "frying eggs", "blanket": "keeping warm at night", "clock": "telling the time",
    "kite": "flying on windy days", "raincoat": "keeping dry in the rain", "bucket": "carrying water",
    "spade": "digging the garden", "brush": "sweeping the floor", "candle": "reading after dark",
    "scarf": "keeping warm on cold days", "bag": "carrying books", "bell": "calling people to dinner",
    "cup": "drinking tea", "bowl": "serving soup", "knife": "cutting bread", "hat": "keeping the sun off",
    "saddle": "riding a horse", "fiddle": "playing music", "drum": "keeping time in a band",
    "map": "finding the way", "stove": "cooking meals", "cart": "moving heavy loads",
    "umbrella": "walking in the rain",
}
MATERIALS = ["wood", "iron", "copper", "clay", "wool", "leather", "tin", "cotton", "straw", "brass"]
BRANDS = [
    "Tarn", "Brisk", "Dapple", "Hobb", "Nimble", "Ember", "Moor", "Ridge", "Sparrow", "Thistle", "Alder",
    "Birch", "Cobble", "Drift", "Fable", "Gale", "Jolly", "Marlin", "Nook", "Oriel", "Pebble", "Ripple",
    "Sorrel", "Tumble",
]
COMPANY_STEMS = [
    "Tarrow", "Greyfield", "Osk", "Hollin", "Mabry", "Penrose", "Stannard", "Wendlow", "Ackroyd", "Bellamy",
    "Cray", "Dorran",
]
COMPANY_SUFFIXES = ["Mills", "Crafts", "Goods", "Ironworks", "Trading", "Makers", "Brothers"]

# shop kind -> what it sells
SHOP_KINDS = {
    "bakery": ["bread", "cakes", "pies", "buns"],
    "grocer": ["apples", "cheese", "tea", "flour", "eggs"],
    "ironmonger": ["pans", "kettles", "spades", "buckets", "nails"],
    "toy shop": ["kites", "balls", "drums", "wooden boats"],
    "book shop": ["books", "maps", "paper", "ink"],
    "tailor": ["coats", "scarves", "hats", "gloves"],
    "dairy": ["milk", "cheese", "butter", "cream"],
    "tea shop": ["tea", "cake", "soup", "toast"],
    "chandler": ["rope", "nets", "candles", "lamps"],
    "pottery": ["cups", "bowls", "jugs", "plates"],
}
SHOP_NAME_ADJ = ["Blue", "Copper", "Golden", "Old", "Little", "Green", "Crooked", "Silver", "Red", "Busy"]
SHOP_NAME_NOUN = ["Door", "Pot", "Loaf", "Lantern", "Anchor", "Needle", "Barrel", "Spoon", "Basket", "Wheel"]

FESTIVALS = [
    "the Lantern Festival", "the Apple Fair", "the Spring Fair", "the Harvest Feast", "the Boat Race",
    "the Midsummer Dance", "the Cheese Fair", "the Kite Day", "the Bell Festival", "the Honey Fair",
]
MARKETS = ["the wool market", "the fish market", "the winter market", "the flower market", "the horse fair"]
STORMS = ["a great storm", "a hail storm", "a snow storm", "a flood", "a gale"]

MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FOODS = [
    "bread", "soup", "pie", "cake", "stew", "porridge", "jam", "cheese", "apples", "plums", "pears",
    "honey", "eggs", "fish", "biscuits", "pancakes", "carrots", "beans", "onions", "potatoes",
]
OBJECTS = [
    "hat", "scarf", "key", "book", "basket", "ball", "map", "spoon", "ring", "letter", "glove", "coin",
]
