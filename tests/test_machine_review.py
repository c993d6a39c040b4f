"""Unit tests of the machine review engine (services/review/machine): pure, no services."""
from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.review.machine import BLOCKING, WARNING, Finding, LexiconData, MachineReviewer, default_lexicons
from services.review.machine.folding import fold_terms
from services.review.machine.personal import _ID_CHECK, _ID_WEIGHTS, luhn_valid, mask

CORPUS = Path(__file__).parent / "corpus" / "machine_review"


def _load_report():
    spec = importlib.util.spec_from_file_location("machine_review_report", CORPUS / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _load_report()
DEFAULTS = default_lexicons()
REVIEWER = MachineReviewer(DEFAULTS)
CLEAN_BODIES = [item.fields["body"] for item in report.clean_items()]


def lexicon(terms: dict, *, allow=(), wording=None, secrecy=(), severity=BLOCKING) -> LexiconData:
    return LexiconData.from_json({
        "categories": {"prohibited.test": {"name": "测试", "severity": severity, "terms": terms}},
        "allow": list(allow), "wording": wording or {}, "secrecy": list(secrecy),
    })


def body(text: str, reviewer: MachineReviewer = REVIEWER, **kw) -> list[Finding]:
    return reviewer.check({"body": text}, **kw)


def categories(findings) -> set[str]:
    return {f.category for f in findings}


def id_number(first17: str) -> str:
    return first17 + _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS)) % 11]


def luhn_complete(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_valid(prefix + d))


# --- folding ---------------------------------------------------------------------------

SPACED = MachineReviewer(lexicon({"颠覆": None, "颠覆国家": None, "vpn翻墙": None}))


def test_traditional_characters_fold_to_simplified():
    [f] = body("網上有人鼓吹顛覆國家政權。")
    assert (f.category, f.matched, f.rule) == ("prohibited.national_security", "顛覆國家政權", "颠覆国家政权")


def test_full_width_and_case_fold():
    [f] = body("提供ＶＰＮ翻牆服务", SPACED)
    assert f.matched == "ＶＰＮ翻牆" and f.rule == "vpn翻墙"


@pytest.mark.parametrize("text", [
    "颠 覆", "颠-覆", "颠\u200b覆", "颠\u3000覆", "颠.覆", "颠_覆", "颠 - 覆", "颠*覆", "颠\u200b\u200b\u200b\u200b覆",
])
def test_separators_inside_a_term_are_ignored(text):
    [f] = body(f"有人说{text}了", SPACED)
    assert (f.start, f.end, f.matched) == (3, 3 + len(text), text)


@pytest.mark.parametrize("text,term", [
    ("颠，覆，国，家", "颠覆国家"),  # spread out character by character: an evasion
    ("颠\n覆\n国\n家", "颠覆国家"),
])
def test_clause_punctuation_between_every_character_still_matches(text, term):
    assert [f.rule for f in body(text, SPACED)] == [term]


@pytest.mark.parametrize("text", [
    "要颠。覆",  # two characters split by a full stop: two sentences
    "先颠，覆盖面广",
    "颠    覆",  # a gap wider than a spaced-out word
    "颠\n\n覆",
])
def test_no_match_across_ordinary_text(text):
    assert body(text, SPACED) == []


def test_clause_punctuation_inside_a_longer_term_does_not_match():
    assert [f.rule for f in body("我们要颠覆，国家的面貌", SPACED)] == ["颠覆"]


def test_positions_map_back_to_the_original_text():
    text = "Ｔｉｔｌｅ：\u200b第一段。\n　　據內部人士透露，明 天 將 發 生 大 地 震，轉-發-救-命！"
    findings = body(text)
    assert [f.rule for f in findings] == ["据内部人士透露", "明天将发生大地震", "转发救命"]
    for f in findings:
        assert text[f.start:f.end] == f.matched
    assert findings[1].matched == "明 天 將 發 生 大 地 震"


def test_term_with_its_own_punctuation_matches_with_or_without_it():
    for text in ("内部资料，注意保密", "内部资料注意保密", "内部资料 注意保密"):
        assert [f.category for f in body(f"本件为{text}。")] == ["secrecy"], text


# --- allow-list ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "坚决打击分裂国家的违法犯罪活动。",
    "学习贯彻反分裂国家法。",
    "国旗护卫队护卫着五星红旗走过天安门广场，大家瞻仰了毛主席纪念堂。",
    "4月15日是全民国家安全教育日。",
    "开展禁赌宣传，劝导群众远离网络赌博。",
    "不要出租、出借、出售银行卡。",
    "我们决不搞多党轮流执政、不照搬三权分立。",
    "税务部门开展打击虚开代开发票专项行动。",
])
def test_allow_list_suppresses_government_prose(text):
    assert body(text) == []


def test_allow_list_suppresses_only_the_occurrence_inside_it():
    reviewer = MachineReviewer(lexicon({"网络赌博": None}, allow=["打击网络赌博"]))
    text = "打击网络赌博，欢迎来玩网络赌博"
    [f] = body(text, reviewer)
    assert f.start == text.rindex("网络赌博")


def test_canonical_names_are_never_flagged_as_wording_errors():
    assert body("中华人民共和国全国人民代表大会、国务院、最高人民检察院、中国人民政治协商会议") == []


# --- wording ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,wrong,canonical", [
    ("庆祝中华人民共合国成立", "中华人民共合国", "中华人民共和国"),
    ("全国人民代表大汇闭幕", "全国人民代表大汇", "全国人民代表大会"),
    ("国务阮办公厅", "国务阮", "国务院"),
    ("中華人明共和國", "中华人明共和国", "中华人民共和国"),
])
def test_wording_errors_name_the_canonical_form(text, wrong, canonical):
    [f] = body(text)
    assert (f.category, f.severity, f.rule, f.suggestion) == ("wording", BLOCKING, wrong, canonical)
    assert text[f.start:f.end] == f.matched


# --- personal data ---------------------------------------------------------------------

@pytest.mark.parametrize("number,masked", [
    ("11010519491231002X", "110105********002X"),
    ("11010519491231002x", "110105********002x"),
    ("440306199003071515", "440306********1515"),
    ("320102 19851111 0236", "320102 ******** 0236"),
    ("110105491231002", "110105******002"),  # the old 15-digit form
])
def test_id_numbers_are_found_and_masked(number, masked):
    text = f"身份证号{number}，住址略"
    [f] = body(text)
    assert (f.category, f.severity, f.matched) == ("personal_data.id_number", BLOCKING, masked)
    assert text[f.start:f.end] == number


@pytest.mark.parametrize("number", [
    "110105194912310021",  # checksum fails
    "110105194913310026",  # no 13th month
    "990105194912310028",  # no province 99
    "11010519491231002",  # 17 digits
])
def test_near_miss_id_numbers_are_not_id_numbers(number):
    assert "personal_data.id_number" not in categories(body(f"编号{number}"))


@pytest.mark.parametrize("text,masked", [
    ("电话13800138000", "138****8000"),
    ("电话138-0013-8000", "138-****-8000"),
    ("电话138 0013 8000", "138 **** 8000"),
    ("电话+86 13800138000", "+86 138****8000"),
    ("电话8613800138000", "86138****8000"),
    ("电话１３８００１３８０００", "１３８****８０００"),
])
def test_mobile_numbers_are_found_and_masked(text, masked):
    [f] = body(text)
    assert (f.category, f.matched, f.start, f.end) == ("personal_data.mobile", masked, 2, len(text))


@pytest.mark.parametrize("number,masked", [
    ("6222020200001235", "6222********1235"),
    ("6228480012345678903", "6228***********8903"),
    ("6228 4800 1234 5678 903", "6228 **** **** ***8 903"),
    ("4367-4212-3456-7896", "4367-****-****-7896"),
])
def test_bank_cards_are_found_and_masked(number, masked):
    text = f"卡号{number}。"
    [f] = body(text)
    assert (f.category, f.matched) == ("personal_data.bank_card", masked)
    assert text[f.start:f.end] == number


@pytest.mark.parametrize("text", [
    "请拨打12345政务服务便民热线",
    "联系电话：010-12345678，0871-65012345，传真0871-65012346",
    "服务热线400-888-8888，报警110，邮编650031",
    "市政办发〔2026〕12号，2026年3月2日印发",
    "总投资13800000000元，增长5.8%",
    "项目编号20260315001至20260315128",
    "流水号12345678901234567890",  # a 20-digit run
    "流水号96222020200001235999",  # a 20-digit run with a valid card inside
    "流水号9911010519491231002X",  # 20 characters with a valid ID inside
    "卡号6222020200001236",  # Luhn fails
    "电话1380013800，电话138001380001",  # 10 and 12 digits
    "电话12345678901",  # no mobile starts 12
])
def test_numbers_that_are_not_personal_data(text):
    assert body(text) == []


def test_personal_data_findings_never_carry_the_full_number():
    text = "身份证11010519491231002X，手机13800138000，卡号6222020200001235"
    findings = body(text)
    assert categories(findings) == {"personal_data.id_number", "personal_data.mobile", "personal_data.bank_card"}
    for f in findings:
        original = text[f.start:f.end]
        assert f.matched != original and len(f.matched) == len(original)
        assert f.matched.count("*") >= 4


def test_mask_keeps_separators_and_prefix():
    assert mask("13800138000", 4, 8) == "138****8000"
    assert mask("+86 138-0013-8000", 4, 8) == "+86 138-****-8000"


# --- secrecy ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,matched", [
    ("秘密★1年\n关于召开会议的通知", "秘密★"),
    ("機密★長期", "機密★"),
    ("绝密 ☆", "绝密 ☆"),
    ("【机密】情况报告", "【机密】"),
    ("[秘密级] 会议纪要", "[秘密级]"),
    ("机密级\n市政府文件", "机密级"),
    ("  秘密  关于某事的报告", "秘密"),
    ("本件仅供内部参考", "仅供内部参考"),
    ("内部文件，注意保密", "内部文件，注意保密"),
    ("请勿外传", "请勿外传"),
])
def test_secrecy_marks(text, matched):
    [f] = body(text)
    assert (f.category, f.severity, f.matched) == ("secrecy", BLOCKING, matched)


@pytest.mark.parametrize("text", [
    "保守国家秘密是每个公民的基本义务。",
    "国家秘密的密级分为绝密、机密、秘密三级。",
    "密级分为“绝密级”“机密级”“秘密级”。",
    "记者揭秘政务服务中心的改革故事。",
    "不得泄露商业秘密和个人隐私。",
    "机密信息不得在互联网上处理。",
    "秘密，是要守护的。",
])
def test_ordinary_uses_of_level_words_are_not_marks(text):
    assert body(text) == []


# --- reprint ---------------------------------------------------------------------------

def test_reprint_without_source_is_blocking():
    [f] = REVIEWER.check({"body": "本文转自网络。"}, is_reprint=True, source_named=False)
    assert (f.category, f.severity, f.field, f.start, f.end) == ("reprint_source", BLOCKING, "source", 0, 0)
    assert REVIEWER.check({"body": "本文转自网络。"}, is_reprint=True, source_named=True) == []
    assert REVIEWER.check({"body": "原创"}, is_reprint=False, source_named=False) == []


# --- severities, output ----------------------------------------------------------------

def test_category_severity_and_term_override():
    assert [f.severity for f in body("老子不干了")] == [WARNING]  # emotional opinion
    assert [f.severity for f in body("千万别来旅游")] == [WARNING]  # region image
    assert [f.severity for f in body("网络赌博")] == [WARNING]  # term override in a blocking category
    assert [f.severity for f in body("六合彩")] == [BLOCKING]
    reviewer = MachineReviewer(lexicon({"一般": None, "严重": BLOCKING}, severity=WARNING))
    assert [(f.rule, f.severity) for f in body("一般和严重", reviewer)] == [("一般", WARNING), ("严重", BLOCKING)]


def test_every_category_has_a_code_name_severity_and_terms():
    assert len(DEFAULTS.categories) == 14
    for code, category in DEFAULTS.categories.items():
        assert code.startswith("prohibited.") and category["name"] and len(category["terms"]) >= 20
        assert category["severity"] in (BLOCKING, WARNING)
    assert DEFAULTS.categories["prohibited.emotional_opinion"]["severity"] == WARNING
    assert DEFAULTS.categories["prohibited.region_image"]["severity"] == WARNING
    assert "prohibited.other" in DEFAULTS.categories


def test_findings_are_sorted_and_serialisable():
    findings = REVIEWER.check({
        "title": "老子不干了", "subtitle": "六合彩", "body": "电话13800138000，網絡賭博，国务阮",
    })
    assert findings == sorted(findings, key=lambda f: (f.field, f.start))
    assert [f.field for f in findings] == ["body", "body", "body", "subtitle", "title"]
    as_dict = findings[0].to_dict()
    assert set(as_dict) == {"category", "severity", "field", "start", "end", "matched", "rule", "suggestion"}
    json.dumps([f.to_dict() for f in findings])


def test_empty_and_missing_fields():
    assert REVIEWER.check({}) == []
    assert REVIEWER.check({"title": "", "subtitle": None, "body": "  "}) == []
    assert MachineReviewer(LexiconData()).check({"body": "颠覆国家政权，电话13800138000"})[0].category == \
        "personal_data.mobile"


def test_reviewer_is_immutable_and_safe_to_share():
    with pytest.raises(AttributeError):
        REVIEWER.version = "x"
    texts = [CLEAN_BODIES[i % len(CLEAN_BODIES)] + "顛覆國家政權，电话13800138000" for i in range(64)]
    expected = [body(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(body, texts)) == expected


# --- LexiconData -----------------------------------------------------------------------

def test_lexicon_round_trips_through_json():
    data = json.loads(json.dumps(DEFAULTS.to_json(), ensure_ascii=False))
    assert LexiconData.from_json(data) == DEFAULTS
    assert LexiconData.from_json(data).to_json() == data


def test_plain_term_list_is_accepted():
    data = LexiconData.from_json({"categories": {"prohibited.x": {"name": "x", "severity": "warning", "terms": ["甲乙"]}}})
    assert data.categories["prohibited.x"]["terms"] == {"甲乙": None}


def _bad(**changes) -> dict:
    data = {"categories": {"prohibited.test": {"name": "测试", "severity": BLOCKING, "terms": {"甲乙": None}}},
            "allow": [], "wording": {}, "secrecy": []}
    data.update(changes)
    return data


def _category(**changes) -> dict:
    category = {"name": "测试", "severity": BLOCKING, "terms": {"甲乙": None}}
    category.update(changes)
    return {"prohibited.test": category}


@pytest.mark.parametrize("data,message", [
    ("not an object", "JSON object"),
    (_bad(alow=[]), "unknown lexicon keys"),
    (_bad(categories=_category(severity="fatal")), "unknown severity"),
    (_bad(categories=_category(terms={"甲乙": "fatal"})), "unknown severity"),
    (_bad(categories=_category(terms={"": None})), "empty term"),
    (_bad(categories=_category(terms={"   ": None})), "empty term"),
    (_bad(categories=_category(terms={"甲" * 51: None})), "longer than 50"),
    (_bad(categories=_category(terms={"！！！": None})), "no letters or digits"),
    (_bad(categories=_category(terms={"甲\n乙": None})), "spans lines"),
    (_bad(categories=_category(name="")), "'name'"),
    (_bad(categories={"Bad Code": {"name": "x", "severity": BLOCKING, "terms": {}}}), "code must look like"),
    (_bad(categories=_category(terms="甲乙")), "'terms'"),
    (_bad(categories={"wording": {"name": "x", "severity": BLOCKING, "terms": {}}}), "reserved"),
    (_bad(allow="五星红旗"), "'allow' must be a list"),
    (_bad(allow=[1]), "not a string"),
    (_bad(secrecy=[""]), "empty term"),
    (_bad(wording={"中华人民共和國": "中华人民共和国"}), "reads the same"),
    (_bad(wording={"国务阮": ""}), "empty term"),
    (_bad(categories=_category(terms={f"词{i}": None for i in range(200_001)})), "too many terms"),
])
def test_lexicon_validation_errors(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LexiconData.from_json(data)


def test_reviewer_rejects_invalid_data_built_directly():
    with pytest.raises(ValueError, match="unknown severity"):
        MachineReviewer(LexiconData(categories={"prohibited.x": {"name": "x", "severity": "high", "terms": {}}}))


def test_a_ten_thousand_term_lexicon_builds_and_matches():
    """How fast it builds and checks is bench/machine_review.py's (no timing in pass/fail tests)."""
    rng = random.Random(1)
    chars = "".join(sorted(set("".join(CLEAN_BODIES)) - set("，。、；：“”（）《》！？\n 0123456789.%")))
    terms = {"".join(rng.choice(chars) for _ in range(rng.randint(4, 8))): None for _ in range(10_000)}
    data = DEFAULTS.to_json()
    data["categories"]["prohibited.synthetic"] = {"name": "合成", "severity": BLOCKING, "terms": terms}
    reviewer = MachineReviewer(LexiconData.from_json(data))
    assert reviewer.term_count >= 10_000
    planted = sorted(terms)[5_000]
    found = reviewer.check({"body": f"前文{planted}后文"})
    assert any(f.category == "prohibited.synthetic" and f.rule == planted for f in found)


# --- corpus ----------------------------------------------------------------------------

def test_corpus_recall_and_no_blocking_on_clean_prose():
    assert len(report.planted_items()) >= 3 * 14 + 3 * 6
    assert len(report.clean_items()) >= 40
    planted = {}
    for item in report.planted_items():
        planted[item.expected] = planted.get(item.expected, 0) + 1
    assert all(planted.get(code, 0) >= 3 for code in DEFAULTS.categories)
    for detector in ("wording", "personal_data.id_number", "personal_data.mobile", "personal_data.bank_card",
                     "secrecy", "reprint_source"):
        assert planted.get(detector, 0) >= 3, detector

    everything = report.score(REVIEWER)
    assert everything.missed == []
    assert everything.recall == 1.0
    for item in report.clean_items():
        blocking = [f for f in REVIEWER.check(item.fields) if f.severity == BLOCKING]
        assert blocking == [], item.label
    blocking = report.score(REVIEWER, blocking_only=True)
    assert blocking.recall == 1.0 and blocking.precision == 1.0
    assert everything.precision >= 0.95
    print(f"machine review corpus: precision={everything.precision:.3f} recall={everything.recall:.3f}")


# --- properties ------------------------------------------------------------------------

def _standalone_terms() -> list[tuple[str, str]]:
    """Default terms that no other term, allow phrase or wrong form contains, so that a
    planted copy is reported exactly where it was planted."""
    keys = [k for k, _ in fold_terms([t for c in DEFAULTS.categories.values() for t in c["terms"]]
                                     + DEFAULTS.allow + list(DEFAULTS.wording) + DEFAULTS.secrecy)]
    out = []
    for code, category in DEFAULTS.categories.items():
        for term in category["terms"]:
            if len(term) >= 3 and sum(term in k for k in keys) == 1 and re.fullmatch(r"\w+", term):
                out.append((code, term))
    return out


STANDALONE = _standalone_terms()
WEAK_SEPARATORS = [" ", "-", "_", "·", "*", "\u200b", "\u200c", "\u3000", " \u200b"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CLEAN_BODIES), st.sampled_from(STANDALONE), st.data())
def test_planted_term_is_found_where_planted(clean, planted, data):
    code, term = planted
    at = data.draw(st.integers(0, len(clean)), label="position")
    separators = data.draw(st.lists(st.sampled_from(WEAK_SEPARATORS + [""] * 4),
                                    min_size=len(term) - 1, max_size=len(term) - 1), label="separators")
    written = term[0] + "".join(sep + ch for sep, ch in zip(separators, term[1:]))
    text = clean[:at] + written + clean[at:]
    hits = [f for f in body(text) if f.category == code and f.rule == term]
    assert [(f.start, f.end, f.matched) for f in hits] == [(at, at + len(written), written)]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=50))
def test_checking_never_raises_and_positions_are_sane(text, title):
    fields = {"title": title, "body": text}
    for f in REVIEWER.check(fields):
        original = fields[f.field]
        assert 0 <= f.start < f.end <= len(original)
        if f.category.startswith("personal_data."):
            assert len(f.matched) == f.end - f.start
        else:
            assert original[f.start:f.end] == f.matched


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["11", "31", "44", "53", "65"]), st.integers(0, 9999),
       st.dates(), st.integers(0, 999), st.sampled_from(CLEAN_BODIES))
def test_any_valid_id_number_is_found(province, county, born, sequence, clean):
    number = id_number(f"{province}{county:04d}{born:%Y%m%d}{sequence:03d}")
    if not 1900 <= born.year <= 2100:
        return
    text = f"{clean}身份证号{number}。"
    hits = [f for f in body(text) if f.category == "personal_data.id_number"]
    assert [(f.start, f.end, f.matched) for f in hits] == [
        (text.index(number), text.index(number) + 18, number[:6] + "*" * 8 + number[-4:])]


def test_luhn_helper():
    assert luhn_valid(luhn_complete("622202020000123"))
