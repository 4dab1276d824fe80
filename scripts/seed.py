"""Deterministic demo catalog: Latin and Chinese names and descriptions,
several categories, realistic prices and stock.

`demo_products(count, seed)` always yields the same products (skus
DEMO-000001...), so a reseed tops up exactly what is missing. Products go in
through `Catalog.create_many` in chunks of 1000, the same path as
`POST /products/bulk`, so the search index and caches are maintained.

    python scripts/seed.py            # seed when the products table is empty
    python scripts/seed.py --top-up   # add any missing demo sku
"""
import argparse
import logging
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("seed")

DEFAULT_COUNT = 10_000
DEFAULT_SEED = 20240601
CHUNK = 1000
SKU_PREFIX = "DEMO-"

# category -> (price range in cents, Latin nouns, Chinese nouns)
CATEGORIES = {
    "electronics": ((1999, 399900), ["Phone", "Laptop", "Headphones", "Smartwatch", "Tablet", "Speaker", "Camera", "Monitor", "Keyboard", "Charger"],
                    ["手机", "笔记本电脑", "耳机", "智能手表", "平板电脑", "蓝牙音箱", "相机", "显示器", "键盘", "充电器"]),
    "books": ((599, 9900), ["Novel", "Cookbook", "Atlas", "Poetry Collection", "Biography", "Textbook", "Comic", "Guide"],
              ["小说", "菜谱", "地图集", "诗集", "传记", "教材", "漫画", "旅行指南"]),
    "home": ((899, 149900), ["Lamp", "Chair", "Pillow", "Blanket", "Vase", "Rug", "Kettle", "Teapot", "Shelf", "Mirror"],
             ["台灯", "椅子", "枕头", "毛毯", "花瓶", "地毯", "电水壶", "茶壶", "书架", "镜子"]),
    "clothing": ((999, 59900), ["T-Shirt", "Jacket", "Sneakers", "Scarf", "Jeans", "Dress", "Hoodie", "Hat", "Socks"],
                 ["T恤", "夹克", "运动鞋", "围巾", "牛仔裤", "连衣裙", "卫衣", "帽子", "袜子"]),
    "sports": ((799, 89900), ["Yoga Mat", "Football", "Tennis Racket", "Bicycle Helmet", "Dumbbell", "Running Shoes", "Water Bottle"],
               ["瑜伽垫", "足球", "网球拍", "自行车头盔", "哑铃", "跑步鞋", "运动水壶"]),
    "toys": ((499, 29900), ["Puzzle", "Building Blocks", "Plush Bear", "Toy Car", "Board Game", "Kite", "Robot Kit"],
             ["拼图", "积木", "毛绒熊", "玩具车", "桌游", "风筝", "机器人套件"]),
    "beauty": ((399, 49900), ["Face Cream", "Lipstick", "Shampoo", "Perfume", "Sunscreen", "Face Mask", "Hand Lotion"],
               ["面霜", "口红", "洗发水", "香水", "防晒霜", "面膜", "护手霜"]),
    "grocery": ((99, 19900), ["Green Tea", "Coffee Beans", "Rice", "Olive Oil", "Dark Chocolate", "Honey", "Noodles", "Soy Sauce"],
                ["绿茶", "咖啡豆", "大米", "橄榄油", "黑巧克力", "蜂蜜", "面条", "酱油"]),
}
BRANDS = ["Acme", "Nordic", "Zenith", "Aurora", "Bluefin", "Cedar", "Helio", "Kestrel", "Lumen", "Orbit", "Pioneer", "Sakura"]
BRANDS_ZH = ["华为", "小米", "联想", "海尔", "李宁", "安踏", "百雀羚", "三只松鼠", "故宫文创", "得力", "美的", "格力"]
ADJECTIVES = ["Classic", "Premium", "Compact", "Wireless", "Organic", "Deluxe", "Lightweight", "Eco", "Pro", "Mini", "Ultra", "Vintage"]
ADJECTIVES_ZH = ["经典", "高端", "便携", "无线", "有机", "豪华", "轻便", "环保", "专业版", "迷你", "超薄", "复古"]
COLORS = ["black", "white", "red", "blue", "green", "grey", "gold", "silver", "pink", "navy"]
COLORS_ZH = ["黑色", "白色", "红色", "蓝色", "绿色", "灰色", "金色", "银色", "粉色", "藏青色"]
FEATURES = ["durable", "water-resistant", "easy to clean", "gift-ready packaging", "two-year warranty",
            "made from recycled materials", "fast shipping", "award-winning design", "ergonomic", "energy efficient"]
FEATURES_ZH = ["经久耐用", "防水", "易于清洁", "精美礼盒包装", "两年质保", "再生材料制造", "极速发货", "获奖设计", "人体工学", "节能省电"]
MODELS = ["Mate", "Air", "Max", "Lite", "Plus", "S", "X", "One", "Neo", "Go"]


def _price(rng, low, high):
    """Log-uniform between low and high, ending in 99 cents like real shelf prices."""
    value = int(low * (high / low) ** rng.random())
    return max(99, (value // 100) * 100 + 99)


def _stock(rng):
    roll = rng.random()
    if roll < 0.05:
        return 0  # sold out
    if roll < 0.15:
        return rng.randint(1, 9)  # nearly gone
    if roll < 0.97:
        return rng.randint(10, 500)
    return rng.randint(1000, 10000)  # flash-sale stock


def demo_product(rng, number):
    category = rng.choice(sorted(CATEGORIES))
    (low, high), nouns, nouns_zh = CATEGORIES[category]
    i = rng.randrange(len(nouns))
    j = rng.randrange(len(nouns_zh))
    model = f"{rng.choice(MODELS)} {rng.randint(2, 60)}"
    color, color_zh = rng.choice(list(zip(COLORS, COLORS_ZH)))
    features = rng.sample(range(len(FEATURES)), 2)
    style = rng.random()
    if style < 0.45:  # English
        name = f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES)} {nouns[i]} {model}"
        description = (f"A {color} {nouns[i].lower()} for everyday use: {FEATURES[features[0]]}, "
                       f"{FEATURES[features[1]]}. Category: {category}.")
    elif style < 0.85:  # Chinese
        name = f"{rng.choice(BRANDS_ZH)}{rng.choice(ADJECTIVES_ZH)}{nouns_zh[j]} {model}"
        description = f"{color_zh}{nouns_zh[j]}，{FEATURES_ZH[features[0]]}，{FEATURES_ZH[features[1]]}。适合日常使用。"
    else:  # bilingual, as many cross-border listings are
        name = f"{rng.choice(BRANDS)} {nouns[i]} {nouns_zh[i]} {model}"
        description = (f"{nouns_zh[i]} / {nouns[i]} in {color} ({color_zh}): {FEATURES[features[0]]}，"
                       f"{FEATURES_ZH[features[1]]}。")
    return {
        "sku": f"{SKU_PREFIX}{number:06d}",
        "name": name[:255],
        "description": description,
        "category": category,
        "price_cents": _price(rng, low, high),
        "stock": _stock(rng),
    }


def demo_products(count=DEFAULT_COUNT, seed=DEFAULT_SEED):
    rng = random.Random(seed)
    return [demo_product(rng, number) for number in range(1, count + 1)]


def product_count(db):
    return int(db.query("SELECT COUNT(*) AS n FROM products")[0]["n"])


def existing_skus(db, skus):
    found = set()
    for start in range(0, len(skus), CHUNK):
        chunk = skus[start:start + CHUNK]
        placeholders = ",".join(["%s"] * len(chunk))
        found.update(r["sku"] for r in db.query(f"SELECT sku FROM products WHERE sku IN ({placeholders})", chunk))
    return found


def seed_catalog(catalog, db, count=DEFAULT_COUNT, seed=DEFAULT_SEED, top_up=False, chunk=CHUNK):
    """Insert the demo catalog; returns how many products were created.

    By default only into an empty products table; with `top_up`, any demo sku
    that is missing is added (existing rows are left alone)."""
    if not top_up and product_count(db) > 0:
        log.info("products table is not empty; not seeding (use --top-up to add missing demo products)")
        return 0
    products = demo_products(count, seed)
    if top_up:
        have = existing_skus(db, [p["sku"] for p in products])
        products = [p for p in products if p["sku"] not in have]
    created = 0
    started = time.monotonic()
    for start in range(0, len(products), chunk):
        created += len(catalog.create_many(products[start:start + chunk]))
        log.info("seeded %d/%d products", created, len(products))
    if created:
        log.info("seeded %d products in %.1fs", created, time.monotonic() - started)
    return created


def main(argv=None):
    parser = argparse.ArgumentParser(description="Seed the demo catalog.")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--top-up", action="store_true", help="add missing demo skus even if products exist")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.path.insert(0, str(ROOT))
    from chalicelib import bootstrap
    from chalicelib.adapters.migrate import migrate

    migrate(bootstrap.database())
    seed_catalog(bootstrap.catalog(), bootstrap.database(), args.count, args.seed, top_up=args.top_up)
    return 0


if __name__ == "__main__":
    sys.exit(main())
