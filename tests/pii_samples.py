"""A generated, labeled PII test set (English and Chinese) with look-alikes that must survive scrubbing."""
from __future__ import annotations

import random
import string

from lmforge.data.pii import cn_id_check_char, mrz_check_digit


def luhn_complete(body: str) -> str:
    for digit in "0123456789":
        candidate = body + digit
        total = 0
        for position, char in enumerate(reversed(candidate)):
            value = int(char) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return candidate
    raise AssertionError


def card(rng):
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("62", 16)])
    digits = luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1)))
    style = rng.randrange(3)
    if style == 0:
        return digits
    sep = " " if style == 1 else "-"
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def iban(rng):
    country, bban = rng.choice([("DE", "".join(rng.choice(string.digits) for _ in range(18))),
                                ("GB", "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
                                 + "".join(rng.choice(string.digits) for _ in range(14))),
                                ("FR", "".join(rng.choice(string.digits) for _ in range(23)))])
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    code = f"{country}{98 - number % 97:02d}{bban}"
    return " ".join(code[i:i + 4] for i in range(0, len(code), 4)) if rng.random() < 0.5 else code


def cn_id(rng):
    region = rng.choice(["110105", "310104", "440305", "510107", "320102"])
    born = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = region + born + f"{rng.randint(0, 999):03d}"
    return body + cn_id_check_char(body)


def email(rng):
    user = rng.choice(["john.doe", "m.smith", "li_wei", "zhang.san", "support", "anna+news"]) + str(rng.randint(1, 99))
    return f"{user}@{rng.choice(['example.com', 'mail.cn', 'qq.com', 'uni-heidelberg.de', 'corp.co.uk'])}"


def cn_mobile(rng):
    digits = "1" + rng.choice("3456789") + "".join(rng.choice(string.digits) for _ in range(9))
    style = rng.randrange(4)
    if style == 0:
        return digits
    if style == 1:
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    if style == 2:
        return f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    return "+86 " + digits


def intl_phone(rng):
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice([f"+44 20 {d(4)} {d(4)}", f"+1 415 {d(3)} {d(4)}", f"+49 30 {d(8)}", f"({rng.randint(200, 989)}) {d(3)}-{d(4)}",
                       f"{rng.randint(200, 989)}-{d(3)}-{d(4)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", f"010-{d(8)}"])


def ipv4(rng):
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def ipv6(rng):
    groups = [f"{rng.randint(0, 0xffff):x}" for _ in range(8)]
    return "2001:db8:" + ":".join(groups[2:]) if rng.random() < 0.5 else f"fe80::{groups[0]}:{groups[1]}"


def credentials(rng):
    return f"{rng.choice(['admin', 'deploy', 'root'])}:{''.join(rng.choice(string.ascii_letters + string.digits) for _ in range(10))}"


def secret(rng):
    alnum = string.ascii_letters + string.digits
    return rng.choice(["AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
                       "ghp_" + "".join(rng.choice(alnum) for _ in range(36)),
                       "sk-" + "".join(rng.choice(alnum) for _ in range(40))])


def ssn(rng):
    return f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"


def mrz(rng):
    number = "".join(rng.choice(string.ascii_uppercase[:6] + string.digits) for _ in range(9))
    born = f"{rng.randint(50, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    expiry = f"{rng.randint(25, 35)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    optional = "<" * 14
    line = (number + mrz_check_digit(number) + rng.choice(["CHN", "GBR", "USA"]) + born + mrz_check_digit(born)
            + rng.choice("MF") + expiry + mrz_check_digit(expiry) + optional + mrz_check_digit(optional))
    return line + mrz_check_digit(line[0:10] + line[13:20] + line[21:43])


PII = {"EMAIL": email, "CREDIT_CARD": card, "IBAN": iban, "CN_RESIDENT_ID": cn_id, "IP_ADDRESS": ipv4,
       "SECRET": secret, "US_SSN": ssn, "PASSPORT_MRZ": mrz}
EN = [("Please email {} before Friday.", "EMAIL"), ("My card number is {}, expiry 12/27.", "CREDIT_CARD"),
      ("Wire the deposit to {} today.", "IBAN"), ("The server at {} is down again.", "IP_ADDRESS"),
      ("Reach me on {} after six.", "PHONE_INTL"), ("Text {} when you land.", "PHONE_CN"),
      ("clone https://{}@git.example.com/repo.git", "URL_CREDENTIALS"), ("export AWS_KEY={}", "SECRET"),
      ("His SSN is {} on the form.", "US_SSN"), ("Passport MRZ: {}", "PASSPORT_MRZ"),
      ("Ping the host {} from the lab.", "IPV6"), ("The Chinese ID {} was on the scan.", "CN_RESIDENT_ID")]
ZH = [("请发邮件到{}，谢谢。", "EMAIL"), ("我的手机号是{}，随时联系。", "PHONE_CN"), ("身份证号码：{}", "CN_RESIDENT_ID"),
      ("银行卡号{}已绑定。", "CREDIT_CARD"), ("服务器地址{}无法访问。", "IP_ADDRESS"), ("国际电话{}。", "PHONE_INTL"),
      ("密钥是{}，不要外传。", "SECRET"), ("汇款账号{}。", "IBAN")]
LOOKALIKES_EN = ["Order #{order} shipped on {date}.", "Upgrade to version {version} before {date}.", "Released v{version4} at {time}.",
                 "The meeting is at {time} on {date}.", "Total: ${price} for {qty} items, {pct}% off.",
                 "Build {build} passed in {qty} minutes.", "Python {py} and numpy {py} are required.",
                 "Invoice {invoice} is due {date}.", "Room {qty}, floor {qty}, call extension {qty}.",
                 "Tracking number {order} updated {date} {time}.", "version {version4} fixes issue #{qty}."]
LOOKALIKES_ZH = ["订单号{order}已于{date}发货。", "请升级到版本{version4}。", "会议时间：{date_zh} {time}。",
                 "合计{price}元，共{qty}件。", "发票编号{invoice}，{date_zh}到期。", "第{qty}章第{qty}节，版本{version}。"]


def fill_lookalike(template: str, rng) -> str:
    values = {"order": "20" + "".join(rng.choice(string.digits) for _ in range(rng.choice([10, 12, 14]))),
              "date": rng.choice([f"2023-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/2024",
                                  f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2023"]),
              "date_zh": f"2024年{rng.randint(1, 12)}月{rng.randint(1, 28)}日",
              "version": f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
              "version4": f"{rng.randint(1, 12)}.{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 255)}",
              "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
              "price": f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}", "qty": str(rng.randint(1, 500)),
              "pct": str(rng.randint(1, 90)), "build": str(rng.randint(10000, 99999999)),
              "py": f"3.{rng.randint(8, 13)}.{rng.randint(0, 9)}", "invoice": f"INV-{rng.randint(2019, 2025)}-{rng.randint(1, 99999):05d}"}
    return template.format(**values)


def labeled_set(n: int = 600, seed: int = 0) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """(text, true spans) pairs: sentences with one PII value each, and look-alike sentences with none."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 2:
            template = rng.choice(LOOKALIKES_EN if i % 2 else LOOKALIKES_ZH)
            text = fill_lookalike(template, rng)
            while "{" in text:
                text = fill_lookalike(text, rng)
            out.append((text, []))
            continue
        template, kind = rng.choice(EN if i % 2 else ZH)
        if kind == "PHONE_CN":
            value, kind = cn_mobile(rng), "PHONE"
        elif kind == "PHONE_INTL":
            value, kind = intl_phone(rng), "PHONE"
        elif kind == "IPV6":
            value, kind = ipv6(rng), "IP_ADDRESS"
        elif kind == "URL_CREDENTIALS":
            value = credentials(rng)
        else:
            value = PII[kind](rng)
        start = template.index("{}")
        out.append((template.format(value), [(start, start + len(value), kind)]))
    return out


def is_chinese(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)
